import * as fs from 'fs';
import * as path from 'path';
import { Match } from 'aws-cdk-lib/assertions';
import { resources, template } from './helpers';

const dev = { template: template('dev') };
const prod = { template: template('prod') };

describe('table', () => {
  test('on-demand, pk/sk strings, PITR, TTL on _expires_at, the stage key', () => {
    dev.template.hasResourceProperties('AWS::DynamoDB::GlobalTable', {
      TableName: 'tenantai-dev',
      BillingMode: 'PAY_PER_REQUEST',
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      AttributeDefinitions: Match.arrayWith([
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ]),
      TimeToLiveSpecification: { AttributeName: '_expires_at', Enabled: true },
      SSESpecification: { SSEEnabled: true, SSEType: 'KMS' },
      Replicas: [
        Match.objectLike({
          PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
          SSESpecification: { KMSMasterKeyId: Match.anyValue() },
        }),
      ],
    });
  });

  test('no secondary index (LeadingKeys covers the base table only)', () => {
    for (const [, t] of resources(dev.template, 'AWS::DynamoDB::GlobalTable')) {
      expect(t.Properties.GlobalSecondaryIndexes).toBeUndefined();
      expect(t.Properties.LocalSecondaryIndexes).toBeUndefined();
    }
  });

  test('deletion protection and retention in prod only', () => {
    const [[, p]] = resources(prod.template, 'AWS::DynamoDB::GlobalTable');
    expect(p.Properties.Replicas[0].DeletionProtectionEnabled).toBe(true);
    expect(p.DeletionPolicy).toBe('Retain');
    const [[, d]] = resources(dev.template, 'AWS::DynamoDB::GlobalTable');
    expect(d.Properties.Replicas[0].DeletionProtectionEnabled).toBe(false);
  });
});

describe('key', () => {
  test('one customer-managed key with rotation, kept on deletion', () => {
    dev.template.resourceCountIs('AWS::KMS::Key', 1);
    const [[, k]] = resources(dev.template, 'AWS::KMS::Key');
    expect(k.Properties.EnableKeyRotation).toBe(true);
    expect(k.DeletionPolicy).toBe('Retain');
  });
});

describe('buckets', () => {
  const buckets = resources(dev.template, 'AWS::S3::Bucket');
  const data = buckets.find(([, b]) => JSON.stringify(b.Properties.BucketName).includes('-data-'))!;
  const logs = buckets.find(([, b]) => JSON.stringify(b.Properties.BucketName).includes('-access-logs-'))!;

  test('both block public access, are versioned and encrypted', () => {
    expect(buckets).toHaveLength(2);
    for (const [, b] of buckets) {
      expect(b.Properties.PublicAccessBlockConfiguration).toEqual({
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      });
      expect(b.Properties.VersioningConfiguration).toEqual({ Status: 'Enabled' });
      expect(b.Properties.BucketEncryption.ServerSideEncryptionConfiguration).toHaveLength(1);
    }
  });

  test('the data bucket uses the stage key and logs to the log bucket', () => {
    const sse = data[1].Properties.BucketEncryption.ServerSideEncryptionConfiguration[0];
    expect(sse.ServerSideEncryptionByDefault.SSEAlgorithm).toBe('aws:kms');
    expect(sse.ServerSideEncryptionByDefault.KMSMasterKeyID).toBeDefined();
    expect(sse.BucketKeyEnabled).toBe(true);
    expect(data[1].Properties.LoggingConfiguration.DestinationBucketName).toEqual({ Ref: logs[0] });
  });

  test('lifecycle: files and batch work outputs expire after 31 days, backups age into archive and expire, noncurrent versions expire', () => {
    const rules = data[1].Properties.LifecycleConfiguration.Rules;
    const byId = Object.fromEntries(rules.map((r: any) => [r.Id, r]));
    // A day past the longest a file record lives (the Rust code's default and ceiling).
    const files = fs.readFileSync(path.join(__dirname, '..', '..', 'shared', 'src', 'batch', 'files.rs'), 'utf8');
    expect(files).toContain('pub const DEFAULT_TTL_SECS: i64 = 30 * 24 * 3600;');
    expect(files).toContain('pub const TTL_RANGE: std::ops::RangeInclusive<i64> = 3600..=2_592_000;');
    expect(byId['expire-files']).toMatchObject({ Prefix: 'files/', ExpirationInDays: 31, Status: 'Enabled' });
    expect(byId['expire-batch-work-outputs']).toMatchObject({ Prefix: 'batches/', ExpirationInDays: 31, Status: 'Enabled' });
    expect(byId['expire-files'].ExpirationInDays * 24 * 3600).toBeGreaterThan(2_592_000);
    expect(byId['age-backups']).toMatchObject({
      Prefix: 'backups/',
      Status: 'Enabled',
      Transitions: [{ StorageClass: 'GLACIER_IR', TransitionInDays: 30 }],
    });
    // The safety net never deletes a monthly backup the function still keeps.
    expect(byId['age-backups'].ExpirationInDays).toBeGreaterThan(3 * 31);
    const prodRules = resources(prod.template, 'AWS::S3::Bucket')
      .find(([, b]) => JSON.stringify(b.Properties.BucketName).includes('-data-'))![1].Properties.LifecycleConfiguration.Rules;
    expect(prodRules.find((r: any) => r.Id === 'age-backups').ExpirationInDays).toBeGreaterThan(12 * 31);
    expect(byId['expire-noncurrent-versions'].NoncurrentVersionExpiration.NoncurrentDays).toBe(30);
    expect(byId['expire-noncurrent-versions'].ExpiredObjectDeleteMarker).toBe(true);
    // No rule expires models (the workers and endpoints load them at start).
    for (const r of rules) expect(r.Prefix ?? '').not.toMatch(/^models/);
    expect(byId['abort-incomplete-uploads'].AbortIncompleteMultipartUpload.DaysAfterInitiation).toBe(2);
  });

  test('every bucket policy denies requests without TLS', () => {
    const policies = resources(dev.template, 'AWS::S3::BucketPolicy');
    expect(policies).toHaveLength(2);
    for (const [, p] of policies) {
      expect(p.Properties.PolicyDocument.Statement).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ Effect: 'Deny', Action: 's3:*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      );
    }
  });
});

describe('alerts topic', () => {
  test('encrypted with the stage key, TLS-only policy', () => {
    dev.template.hasResourceProperties('AWS::SNS::Topic', { TopicName: 'tenantai-dev-alerts', KmsMasterKeyId: Match.anyValue() });
    dev.template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({ Effect: 'Deny', Action: 'sns:Publish', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
        ]),
      },
    });
  });

  test('the key lets CloudWatch alarms publish to it', () => {
    const [[, k]] = resources(dev.template, 'AWS::KMS::Key');
    const st = k.Properties.KeyPolicy.Statement.find((s: any) => s.Sid === 'CloudWatchAlarmsPublishToTheTopic');
    expect(st.Principal).toEqual({ Service: 'cloudwatch.amazonaws.com' });
    expect(st.Action).toEqual(['kms:Decrypt', 'kms:GenerateDataKey*']);
  });
});
