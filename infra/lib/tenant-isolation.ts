// Tenant isolation in IAM (AWS SaaS guidance): a role whose table access is limited by
// `dynamodb:LeadingKeys` to the partition keys of one tenant, named by the session tag
// `TenantId`. The api assumes it with that tag for each tenant it serves and caches the
// credentials per tenant (role chaining caps a session at one hour).
import { Duration, Stack } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { BUCKET_PREFIXES } from './data';
import { ackArnWildcard } from './nag';

export const TENANT_TAG = 'TenantId';
const TENANT = `\${aws:PrincipalTag/${TENANT_TAG}}`;

/**
 * Every partition key of a tenant's own items, as `shared/src` writes them, with the
 * tenant id in place of `<t>`. Each is one LeadingKeys pattern (StringLike: only the key
 * counters' ends with `*`, after the tenant id and a delimiter; the others match exactly).
 * `shared/src/store/aws/tenant_scoped.rs` sends exactly these with tenant credentials.
 */
export const TENANT_PARTITION_KEYS: readonly string[] = [
  'TENANT#<t>', // keys.rs: the tenant's keys (sk KEY#<id>)
  'FILE#<t>', // batch/files.rs: the tenant's uploaded and output files
  'BATCH#<t>', // batch/batches.rs: batch records, their counters and chunk claims
  'USAGE#<t>', // metering.rs: daily/model aggregates and month totals
  'BUDGET#<t>', // budget.rs: the month's committed spend
  'ALERTS#<t>', // alerts.rs: alert claims
  'AUDIT#<t>', // audit.rs: the tenant's audit records
  'CACHE#<t>', // cache.rs: the tenant-scoped embeddings cache
  'RL#tenant:<t>', // ratelimit.rs: the tenant's rate-limit counters
  'RL#tenant:<t>#key:*', // ratelimit.rs: the counters of each of the tenant's keys
];

/**
 * Partition keys the request path reads or writes that carry no tenant id, so no
 * LeadingKeys pattern can give them to one tenant. With tenant credentials on, the
 * api's own role keeps exactly these (see infra/README.md for the Rust changes).
 */
export const PLATFORM_PARTITION_KEYS: readonly string[] = [
  'TENANTS', // tenants.rs: every tenant record (sk T#<id>), read by the request path
  'MODELS', // models.rs: the model registry
  'CACHE#shared', // cache.rs: the opt-in shared cache scope
];

/** The item actions of the request path; never Scan (LeadingKeys does not limit it). */
export const ITEM_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
  'dynamodb:ConditionCheckItem',
];

export function leadingKeyPatterns(keys: readonly string[]): string[] {
  return keys.map((k) => k.replace('<t>', TENANT));
}

export interface TenantIsolationProps {
  readonly prefix: string;
  readonly table: dynamodb.ITableV2;
  readonly bucket: s3.IBucket;
  readonly key: kms.IKey;
  /** The only principal that may assume the tenant role: the api function's role. */
  readonly apiRole: iam.IRole;
}

export class TenantIsolation extends Construct {
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: TenantIsolationProps) {
    super(scope, id);
    const stack = Stack.of(this);
    this.role = new iam.Role(this, 'TenantRole', {
      roleName: `${props.prefix}-tenant-scoped`,
      description: "One tenant's data: table items by LeadingKeys, objects by prefix, from the session tag TenantId",
      // AssumeRole and TagSession, from the api's role only, with a TenantId tag and no other.
      assumedBy: new iam.PrincipalWithConditions(new iam.SessionTagsPrincipal(new iam.ArnPrincipal(props.apiRole.roleArn)), {
        StringLike: { [`aws:RequestTag/${TENANT_TAG}`]: '?*' },
        'ForAllValues:StringEquals': { 'aws:TagKeys': [TENANT_TAG] },
      }),
      maxSessionDuration: Duration.hours(1),
    });

    this.role.attachInlinePolicy(
      new iam.Policy(this, 'TenantData', {
        statements: [
          new iam.PolicyStatement({
            sid: 'OwnItemsOnly',
            actions: ITEM_ACTIONS,
            resources: [props.table.tableArn],
            conditions: {
              'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': leadingKeyPatterns(TENANT_PARTITION_KEYS) },
              // ForAllValues holds vacuously for a request without keys: require them.
              Null: { 'dynamodb:LeadingKeys': 'false' },
            },
          }),
          new iam.PolicyStatement({
            sid: 'OwnObjectsOnly',
            actions: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'],
            resources: [BUCKET_PREFIXES.files, BUCKET_PREFIXES.batches].map((p) => props.bucket.arnForObjects(`${p}${TENANT}/*`)),
          }),
          new iam.PolicyStatement({
            sid: 'TheDataKeyThroughTheseServices',
            actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
            resources: [props.key.keyArn],
            conditions: {
              StringEquals: {
                'kms:ViaService': [`dynamodb.${stack.region}.amazonaws.com`, `s3.${stack.region}.amazonaws.com`],
              },
            },
          }),
        ],
      }),
    );
    const policy = this.node.findChild('TenantData');
    for (const prefix of [BUCKET_PREFIXES.files, BUCKET_PREFIXES.batches]) {
      ackArnWildcard(policy, props.bucket, `/${prefix}<aws:PrincipalTag/${TENANT_TAG}>/*`,
        `The session's own tenant prefix under ${prefix}: the wildcard is below the tenant id the session tag fixes.`);
    }
  }
}
