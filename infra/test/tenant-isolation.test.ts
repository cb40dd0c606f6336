import * as fs from 'fs';
import * as path from 'path';
import { ITEM_ACTIONS, PLATFORM_PARTITION_KEYS, TENANT_PARTITION_KEYS } from '../lib/tenant-isolation';
import { asArray, resources, statementsOf, template } from './helpers';

const dev = template('dev');
const roles = resources(dev, 'AWS::IAM::Role');
const [tenantRoleId, tenantRole] = roles.find(([, r]) => r.Properties.RoleName === 'tenantai-dev-tenant-scoped')!;
const [apiRoleId] = roles.find(([, r]) => r.Properties.RoleName === 'tenantai-dev-api-fn')!;

const EXPECTED_LEADING_KEYS = [
  'TENANT#${aws:PrincipalTag/TenantId}',
  'FILE#${aws:PrincipalTag/TenantId}',
  'BATCH#${aws:PrincipalTag/TenantId}',
  'USAGE#${aws:PrincipalTag/TenantId}',
  'BUDGET#${aws:PrincipalTag/TenantId}',
  'ALERTS#${aws:PrincipalTag/TenantId}',
  'AUDIT#${aws:PrincipalTag/TenantId}',
  'CACHE#${aws:PrincipalTag/TenantId}',
  'RL#tenant:${aws:PrincipalTag/TenantId}',
  'RL#tenant:${aws:PrincipalTag/TenantId}#key:*',
];

test('trust: only the api role, AssumeRole + TagSession, one TenantId tag and no other', () => {
  const trust = tenantRole.Properties.AssumeRolePolicyDocument.Statement;
  expect(trust).toHaveLength(1);
  expect(trust[0]).toEqual({
    Effect: 'Allow',
    Principal: { AWS: { 'Fn::GetAtt': [apiRoleId, 'Arn'] } },
    Action: ['sts:AssumeRole', 'sts:TagSession'],
    Condition: {
      StringLike: { 'aws:RequestTag/TenantId': '?*' },
      'ForAllValues:StringEquals': { 'aws:TagKeys': ['TenantId'] },
    },
  });
  expect(tenantRole.Properties.MaxSessionDuration).toBe(3600);
});

test('table access: item actions only, no Scan, on the base table, LeadingKeys one pattern per tenant item type', () => {
  const sts = statementsOf(dev, tenantRoleId);
  const ddb = sts.filter((s) => asArray(s.Action).some((a: string) => a.startsWith('dynamodb:')));
  expect(ddb).toHaveLength(1);
  const [st] = ddb;
  expect(st.Effect).toBe('Allow');
  expect(asArray(st.Action).sort()).toEqual([...ITEM_ACTIONS].sort());
  expect(asArray(st.Action)).not.toContain('dynamodb:Scan');
  expect(asArray(st.Resource)).toHaveLength(1);
  expect(JSON.stringify(st.Resource)).toMatch(/Table/);
  expect(JSON.stringify(st.Resource)).not.toMatch(/index/);
  expect(st.Condition['ForAllValues:StringLike']['dynamodb:LeadingKeys'].sort()).toEqual([...EXPECTED_LEADING_KEYS].sort());
  // A wildcard only after the tenant id and a delimiter: no pattern reaches another tenant's keys.
  for (const k of EXPECTED_LEADING_KEYS) expect(k.replace(/^[^$]*\$\{aws:PrincipalTag\/TenantId\}/, '')).toMatch(/^(#[a-z]+:\*)?$/);
  expect(st.Condition.Null).toEqual({ 'dynamodb:LeadingKeys': 'false' });
});

test('objects: only under the tagged tenant’s own prefixes', () => {
  const s3 = statementsOf(dev, tenantRoleId).find((s) => asArray(s.Action).some((a: string) => a.startsWith('s3:')));
  const res = JSON.stringify(s3.Resource);
  expect(res).toContain('/files/${aws:PrincipalTag/TenantId}/*');
  expect(res).toContain('/batches/${aws:PrincipalTag/TenantId}/*');
  expect(asArray(s3.Action)).not.toContain('s3:ListBucket');
});

test('nothing else: no statement without a condition or a tenant-scoped resource', () => {
  for (const s of statementsOf(dev, tenantRoleId)) {
    expect(Boolean(s.Condition) || JSON.stringify(s.Resource).includes('${aws:PrincipalTag/TenantId}')).toBe(true);
  }
});

test('the api role may assume the tenant role, and nobody else is trusted', () => {
  const st = statementsOf(dev, apiRoleId).find((s) => asArray(s.Action).includes('sts:AssumeRole'));
  expect(st.Resource).toEqual({ 'Fn::GetAtt': [tenantRoleId, 'Arn'] });
  expect(asArray(st.Action).sort()).toEqual(['sts:AssumeRole', 'sts:TagSession']);
  for (const [id, r] of roles) {
    if (id === tenantRoleId) continue;
    for (const s of r.Properties.AssumeRolePolicyDocument.Statement) {
      expect(JSON.stringify(s.Principal)).not.toContain(apiRoleId);
    }
  }
});

test('with tenant credentials on, the api role keeps only the platform partition keys', () => {
  const t = template('devTenantCredentials');
  const [id] = resources(t, 'AWS::IAM::Role').find(([, r]) => r.Properties.RoleName === 'tenantai-dev-api-fn')!;
  const ddb = statementsOf(t, id).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('dynamodb:')));
  expect(ddb).toHaveLength(1);
  expect(ddb[0].Condition['ForAllValues:StringLike']['dynamodb:LeadingKeys']).toEqual([...PLATFORM_PARTITION_KEYS]);
  expect(ddb[0].Condition.Null).toEqual({ 'dynamodb:LeadingKeys': 'false' });
  // Without it (today's code), the api's own role reaches every item, Scan excepted.
  const plain = statementsOf(dev, apiRoleId).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('dynamodb:')));
  expect(plain[0].Condition).toBeUndefined();
});

// Every partition-key format the Rust code writes must be classified: a tenant's item
// (a LeadingKeys pattern above), a platform item the request path uses, or an item
// only platform functions touch. A new format fails this test until it is placed.
const ONLY_PLATFORM_FUNCTIONS: Record<string, string> = {
  'KEY#': 'keys.rs: key lookup by hash (authorizer, admin)',
  'ADMIN': 'keys.rs: admin tokens (admin)',
  'EVENT#': 'metering.rs: exactly-once claims (metering)',
  'AUDIT#_platform': 'audit.rs: platform audit records (admin)',
  '_RESTORE': 'backup.rs: restore progress records (the restore CLI, platform credentials)',
};

function rustPartitionKeyPrefixes(): Set<string> {
  const dir = path.join(__dirname, '..', '..', 'shared', 'src');
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'store') walk(p);
      } else if (e.name.endsWith('.rs')) files.push(p);
    }
  };
  walk(dir);
  const out = new Set<string>();
  for (const f of files) {
    const src = fs.readFileSync(f, 'utf8');
    // pk helpers and Key::new's first argument: `format!("USAGE#{tenant_id}")`, `"MODELS"`.
    for (const m of src.matchAll(/Key::new\(\s*(?:format!\(\s*)?"([A-Z_]+#?)/g)) out.add(m[1]);
    for (const m of src.matchAll(/(?:fn [a-z_]*pk\([^)]*\)[^{]*\{\s*|Query::new\(\s*)format!\("([A-Z_]+#)/g)) out.add(m[1]);
    for (const m of src.matchAll(/const [A-Z_]*PK: &str = "([A-Z_]+)"/g)) out.add(m[1]);
  }
  return out;
}

test('every partition-key format in shared/src is classified', () => {
  const found = rustPartitionKeyPrefixes();
  // The scan itself must work: these are known to exist.
  for (const known of ['USAGE#', 'BUDGET#', 'FILE#', 'BATCH#', 'TENANT#', 'CACHE#', 'ALERTS#', 'RL#', 'KEY#', 'EVENT#', 'MODELS', 'TENANTS']) {
    expect(found).toContain(known);
  }
  const classified = [...TENANT_PARTITION_KEYS, ...PLATFORM_PARTITION_KEYS, ...Object.keys(ONLY_PLATFORM_FUNCTIONS)].map((k) =>
    k.replace(/<t>.*$/, '').replace(/\*$/, ''),
  );
  for (const prefix of found) {
    expect(classified.some((c) => c === prefix || c.startsWith(prefix))).toBe(true);
  }
});

test('the api sends exactly the tenant partition keys with tenant credentials (shared/src/store/aws/tenant_scoped.rs)', () => {
  const src = fs.readFileSync(path.join(__dirname, '..', '..', 'shared', 'src', 'store', 'aws', 'tenant_scoped.rs'), 'utf8');
  const list = src.match(/pub const TENANT_PARTITION_PREFIXES: \[&str; \d+\] = \[([^\]]*)\]/);
  expect(list).not.toBeNull();
  const rust = [...list![1].matchAll(/"([^"]+)"/g)].map((m) => m[1]).sort();
  const infra = [...new Set(TENANT_PARTITION_KEYS.map((k) => k.replace(/<t>.*$/, '')))].sort();
  expect(rust).toEqual(infra);
  expect(src).toContain('pub const TENANT_TAG: &str = "TenantId"');
  // The lookalikes the Rust code keeps on the platform's credentials are platform keys here.
  for (const k of ['CACHE#shared']) expect(PLATFORM_PARTITION_KEYS).toContain(k);
  expect(Object.keys(ONLY_PLATFORM_FUNCTIONS)).toContain('AUDIT#_platform');
  expect(src).toContain('["AUDIT#_platform", "CACHE#shared"]');
});
