// The stateful resources: one customer-managed KMS key, the single table, the data
// bucket with its access-log bucket, and the alerts topic.
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { StageConfig } from './config';
import { checkovSkip } from './nag';

/** Where each kind of object lives in the data bucket. */
export const BUCKET_PREFIXES = {
  /** Uploaded batch input files and assembled output/error files (Files API). */
  files: 'files/',
  /** Per-work-item partial outputs of running batches. */
  batches: 'batches/',
  /** Logical table backups (the backup function). */
  backups: 'backups/',
  /** Model directories (manifest.json + files) the workers and SageMaker load. */
  models: 'models/',
} as const;

/**
 * Days after which objects under files/ and batches/ expire: one more than the longest
 * a file record lives (30 days), so no live record names a missing object.
 */
export const OBJECT_EXPIRY_DAYS = 31;

/** The attribute the Rust table adapter writes item expiry to (`store::table::EXPIRES_ATTR`). */
export const EXPIRES_ATTR = '_expires_at';

export class Data extends Construct {
  readonly key: kms.Key;
  readonly table: dynamodb.TableV2;
  readonly bucket: s3.Bucket;
  readonly logBucket: s3.Bucket;
  readonly alertsTopic: sns.Topic;

  constructor(scope: Construct, id: string, cfg: StageConfig) {
    super(scope, id);
    const stack = Stack.of(this);
    const keep = cfg.prod ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY;

    this.key = new kms.Key(this, 'Key', {
      alias: `alias/${cfg.prefix}`,
      description: `tenantai ${cfg.stage}: table, bucket, queues, topic and logs`,
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    // CloudWatch alarms publish to the encrypted topic.
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsPublishToTheTopic',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': stack.account } },
      }),
    );
    // CloudWatch Logs encrypts this stage's log groups.
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchLogsEncryptsTheStagesLogGroups',
        principals: [new iam.ServicePrincipal(`logs.${stack.region}.amazonaws.com`)],
        actions: ['kms:Encrypt*', 'kms:Decrypt*', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:Describe*'],
        resources: ['*'],
        conditions: {
          ArnLike: {
            'kms:EncryptionContext:aws:logs:arn': `arn:${stack.partition}:logs:${stack.region}:${stack.account}:log-group:*`,
          },
        },
      }),
    );

    this.table = new dynamodb.TableV2(this, 'Table', {
      tableName: cfg.prefix,
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billing: dynamodb.Billing.onDemand(),
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: cfg.prod,
      timeToLiveAttribute: EXPIRES_ATTR,
      encryption: dynamodb.TableEncryptionV2.customerManagedKey(this.key),
      removalPolicy: keep,
    });

    this.logBucket = new s3.Bucket(this, 'AccessLogs', {
      bucketName: `${cfg.prefix}-access-logs-${stack.account}-${stack.region}`,
      // Server access log delivery supports SSE-S3 only.
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      versioned: true,
      lifecycleRules: [
        { id: 'expire-access-logs', expiration: Duration.days(cfg.prod ? 365 : 90), noncurrentVersionExpiration: Duration.days(7) },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    checkovSkip(this.logBucket, 'CKV_AWS_18', 'This is the access-log target bucket itself; logging its own accesses into itself would loop.');

    const backupDays = (cfg.backupKeepMonthly + 1) * 31;
    this.bucket = new s3.Bucket(this, 'Bucket', {
      bucketName: `${cfg.prefix}-data-${stack.account}-${stack.region}`,
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: this.key,
      bucketKeyEnabled: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      versioned: true,
      serverAccessLogsBucket: this.logBucket,
      serverAccessLogsPrefix: 'data/',
      lifecycleRules: [
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(2) },
        // Overwritten and deleted objects stay recoverable for 30 days; a delete marker
        // left alone after that goes too.
        { id: 'expire-noncurrent-versions', noncurrentVersionExpiration: Duration.days(30), expiredObjectDeleteMarker: true },
        // A file record expires at most 30 days after its creation (`expires_after`,
        // DEFAULT_TTL_SECS in shared/src/batch/files.rs); its object a day later.
        { id: 'expire-files', prefix: BUCKET_PREFIXES.files, expiration: Duration.days(OBJECT_EXPIRY_DAYS) },
        // Chunk results are assembled into files/ when a batch finishes.
        { id: 'expire-batch-work-outputs', prefix: BUCKET_PREFIXES.batches, expiration: Duration.days(OBJECT_EXPIRY_DAYS) },
        // The backup function keeps N daily and M monthly backups; this is the safety net
        // behind it, and older backups move to instant-retrieval archive storage.
        {
          id: 'age-backups',
          prefix: BUCKET_PREFIXES.backups,
          transitions: [{ storageClass: s3.StorageClass.GLACIER_INSTANT_RETRIEVAL, transitionAfter: Duration.days(30) }],
          expiration: Duration.days(Math.max(backupDays, 120)),
        },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.alertsTopic = new sns.Topic(this, 'Alerts', {
      topicName: `${cfg.prefix}-alerts`,
      displayName: `tenantai ${cfg.stage} alerts`,
      masterKey: this.key,
      enforceSSL: true,
    });
    if (cfg.alarmEmail) {
      this.alertsTopic.addSubscription(new subscriptions.EmailSubscription(cfg.alarmEmail));
    }
  }
}
