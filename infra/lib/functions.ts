// The six Lambda functions (arm64, provided.al2023, prebuilt `bootstrap` directories),
// each with its own role holding only what its code calls.
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { emfNamespace, FUNCTION_NAMES, FunctionName, METRICS_NAMESPACE_VAR, StageConfig } from './config';
import { BUCKET_PREFIXES } from './data';
import { Queues } from './queues';
import { ackArnWildcard, ackWildcard, checkovSkip } from './nag';
import { ITEM_ACTIONS, PLATFORM_PARTITION_KEYS, TenantIsolation } from './tenant-isolation';

/** The api's object actions on `files/*` (`shared/src/store/aws/blobs.rs` through `batch/files.rs`). */
export const API_FILE_ACTIONS = ['s3:PutObject', 's3:AbortMultipartUpload', 's3:GetObject', 's3:DeleteObject'];

/** The code of one function: the directory holding its `bootstrap` (cargo lambda build output). */
export type FunctionCode = (name: FunctionName) => lambda.Code;

export interface FunctionsProps {
  readonly cfg: StageConfig;
  readonly code: FunctionCode;
  readonly table: dynamodb.TableV2;
  readonly bucket: s3.Bucket;
  readonly key: kms.IKey;
  readonly queues: Queues;
  readonly alertsTopic: sns.ITopic;
  /**
   * The api reads and writes tenant items only with tenant-scoped credentials: its own
   * role keeps just the platform partition keys. Off until the Rust api assumes the role.
   */
  readonly tenantCredentials: boolean;
}

export class Functions extends Construct {
  readonly fns = {} as Record<FunctionName, lambda.Function>;
  readonly roles = {} as Record<FunctionName, iam.Role>;
  readonly tenantIsolation: TenantIsolation;

  constructor(scope: Construct, id: string, props: FunctionsProps) {
    super(scope, id);
    const { cfg, table, bucket, key, queues } = props;
    const stack = Stack.of(this);
    const viaService = (...services: string[]) => ({
      StringEquals: { 'kms:ViaService': services.map((s) => `${s}.${stack.region}.amazonaws.com`) },
    });

    const common: Record<string, string> = {
      TENANTAI_RESOURCE_PREFIX: cfg.prefix,
      TENANTAI_TABLE: table.tableName,
      TENANTAI_BUCKET: bucket.bucketName,
      [METRICS_NAMESPACE_VAR]: emfNamespace(cfg),
      RUST_LOG: 'info',
    };
    const env: Record<FunctionName, Record<string, string>> = {
      api: { TENANTAI_JOBS_QUEUE: queues.jobs.queueName },
      admin: {},
      authorizer: {
        TENANTAI_AUTH_CACHE_SECS: '30',
        ...(cfg.jwt
          ? { TENANTAI_JWKS_URL: cfg.jwt.jwksUrl, TENANTAI_JWT_ISSUER: cfg.jwt.issuer, TENANTAI_JWT_AUDIENCE: cfg.jwt.audience }
          : {}),
      },
      metering: {},
      'cost-alerts': { TENANTAI_ALERTS_TOPIC_ARN: props.alertsTopic.topicArn },
      backup: {
        TENANTAI_BACKUP_KEEP_DAILY: String(cfg.backupKeepDaily),
        TENANTAI_BACKUP_KEEP_MONTHLY: String(cfg.backupKeepMonthly),
      },
    };
    // Invoked asynchronously by EventBridge Scheduler: failures go to the schedules DLQ.
    const scheduled = new Set<FunctionName>(['cost-alerts', 'backup']);

    for (const name of FUNCTION_NAMES) {
      const sizing = cfg.functions[name];
      const functionName = `${cfg.prefix}-${name}`;
      const logGroup = new logs.LogGroup(this, `${name}Logs`, {
        logGroupName: `/aws/lambda/${functionName}`,
        retention: cfg.logRetentionDays,
        encryptionKey: key,
        removalPolicy: cfg.prod ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
      });
      const role = new iam.Role(this, `${name}Role`, {
        roleName: `${functionName}-fn`,
        description: `tenantai ${name} function (${cfg.stage})`,
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      });
      // Its own log group only (no managed basic-execution policy).
      role.addToPolicy(
        new iam.PolicyStatement({
          sid: 'OwnLogGroup',
          actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
          resources: [logGroup.logGroupArn],
        }),
      );
      // Lambda decrypts the environment with the function's role at start.
      role.addToPolicy(
        new iam.PolicyStatement({
          sid: 'DecryptOwnEnvironment',
          actions: ['kms:Decrypt'],
          resources: [key.keyArn],
          conditions: viaService('lambda'),
        }),
      );
      const fn = new lambda.Function(this, name, {
        functionName,
        description: `tenantai ${name} (${cfg.stage})`,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        architecture: lambda.Architecture.ARM_64,
        handler: 'bootstrap',
        code: props.code(name),
        memorySize: sizing.memoryMb,
        timeout: sizing.timeout,
        reservedConcurrentExecutions: sizing.reservedConcurrency,
        role,
        logGroup,
        environment: { ...common, ...env[name] },
        environmentEncryption: key,
        ...(scheduled.has(name)
          ? { deadLetterQueueEnabled: true, deadLetterQueue: queues.schedulesDlq, retryAttempts: 2, maxEventAge: Duration.hours(1) }
          : {}),
      });
      this.fns[name] = fn;
      this.roles[name] = role;
      checkovSkip(fn, 'CKV_AWS_117',
        'Not in a VPC: the function reaches only AWS APIs (DynamoDB, SQS, S3, SNS, STS, SageMaker) and tenant webhooks over TLS; a VPC would add NAT or one interface endpoint per service for no reachable private resource.');
      if (!scheduled.has(name)) {
        checkovSkip(fn, 'CKV_AWS_116',
          name === 'metering'
            ? 'Invoked by its SQS event source, never asynchronously: failed records stay on the usage queue, which redrives them to its own DLQ.'
            : 'Invoked synchronously (API Gateway), never asynchronously: a Lambda DLQ only receives failed asynchronous events; the caller gets the error.');
      }
    }

    const table_ = (role: iam.Role, sid: string, actions: string[], conditions?: Record<string, unknown>) =>
      role.addToPolicy(new iam.PolicyStatement({ sid, actions, resources: [table.tableArn], conditions }));
    const tableKey = (role: iam.Role, actions: string[]) =>
      role.addToPolicy(
        new iam.PolicyStatement({ sid: 'DataKeyViaDynamoDB', actions, resources: [key.keyArn], conditions: viaService('dynamodb') }),
      );
    const r = this.roles;

    // authorizer: key lookup by hash and the tenant record; reads only.
    table_(r.authorizer, 'ReadKeysAndTenants', ['dynamodb:GetItem']);
    tableKey(r.authorizer, ['kms:Decrypt']);

    // api: the request path. No Scan. Usage events out; batch work items out.
    this.tenantIsolation = new TenantIsolation(this, 'TenantIsolation', {
      prefix: cfg.prefix,
      table,
      bucket,
      key,
      apiRole: r.api,
    });
    // The role the api assumes (session tag TenantId) for a tenant's items.
    this.fns.api.addEnvironment('TENANTAI_TENANT_ROLE_ARN', this.tenantIsolation.role.roleArn);
    if (props.tenantCredentials) {
      table_(r.api, 'PlatformItemsOnly', ITEM_ACTIONS, {
        'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': [...PLATFORM_PARTITION_KEYS] },
        Null: { 'dynamodb:LeadingKeys': 'false' },
      });
    } else {
      table_(r.api, 'RequestPathItems', ITEM_ACTIONS);
    }
    tableKey(r.api, ['kms:Decrypt', 'kms:GenerateDataKey']);
    r.api.addToPolicy(
      new iam.PolicyStatement({
        sid: 'AssumeTenantScopedRole',
        actions: ['sts:AssumeRole', 'sts:TagSession'],
        resources: [this.tenantIsolation.role.roleArn],
      }),
    );
    // Usage events, and a new batch's validation job.
    r.api.addToPolicy(
      new iam.PolicyStatement({
        sid: 'SendUsageEventsAndValidationJobs',
        actions: ['sqs:SendMessage', 'sqs:GetQueueUrl'],
        resources: [queues.usage.queueArn, queues.jobs.queueArn],
      }),
    );
    r.api.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyViaSqsAndS3',
        actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [key.keyArn],
        conditions: viaService('sqs', 's3'),
      }),
    );
    // The Files API with the function's own role (not the tenant role): uploads (PUT, or
    // multipart above 16 MiB: s3:PutObject covers create/upload part/complete), content
    // downloads, deletes, all of `files/<tenant>/<file id>`. Chunk results under
    // batches/ are the workers' alone.
    r.api.addToPolicy(
      new iam.PolicyStatement({
        sid: 'TenantFiles',
        actions: API_FILE_ACTIONS,
        resources: [bucket.arnForObjects(`${BUCKET_PREFIXES.files}*`)],
      }),
    );
    r.api.addToPolicy(
      new iam.PolicyStatement({
        sid: 'InvokeTheStagesSageMakerEndpoints',
        actions: ['sagemaker:InvokeEndpoint'],
        resources: [`arn:${stack.partition}:sagemaker:${stack.region}:${stack.account}:endpoint/${cfg.prefix}-*`],
      }),
    );

    // admin: tenants, keys, models, budgets, audit; reports by query. No Scan.
    table_(r.admin, 'AdminItems', ITEM_ACTIONS);
    tableKey(r.admin, ['kms:Decrypt', 'kms:GenerateDataKey']);

    // metering: claims + adds in one transaction, reads for reports; malformed events to the DLQ.
    table_(r.metering, 'FoldUsage', ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem']);
    tableKey(r.metering, ['kms:Decrypt', 'kms:GenerateDataKey']);
    r.metering.addToPolicy(
      new iam.PolicyStatement({
        sid: 'MalformedEventsToTheDlq',
        actions: ['sqs:SendMessage', 'sqs:GetQueueUrl'],
        resources: [queues.usageDlq.queueArn],
      }),
    );
    // The event source: receive/delete/visibility on the usage queue (+ its key via SQS).
    this.fns.metering.addEventSource(
      new SqsEventSource(queues.usage, {
        batchSize: 100,
        maxBatchingWindow: Duration.seconds(5),
        reportBatchItemFailures: true,
        maxConcurrency: Math.max(2, cfg.functions.metering.reservedConcurrency ?? 2),
      }),
    );

    // cost-alerts: reads spend, claims alerts (put/update/delete to give back), publishes.
    table_(r['cost-alerts'], 'AlertClaims', ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query']);
    tableKey(r['cost-alerts'], ['kms:Decrypt', 'kms:GenerateDataKey']);
    r['cost-alerts'].addToPolicy(
      new iam.PolicyStatement({ sid: 'PublishAlerts', actions: ['sns:Publish'], resources: [props.alertsTopic.topicArn] }),
    );
    r['cost-alerts'].addToPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyViaSns',
        actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [key.keyArn],
        conditions: viaService('sns'),
      }),
    );

    // backup: the one role that scans (parallel segments), on the base table only.
    table_(r.backup, 'ExportTheTable', ['dynamodb:Scan', 'dynamodb:DescribeTable']);
    tableKey(r.backup, ['kms:Decrypt']);
    r.backup.addToPolicy(
      new iam.PolicyStatement({
        sid: 'WriteAndPruneBackups',
        actions: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'],
        resources: [bucket.arnForObjects(`${BUCKET_PREFIXES.backups}*`)],
      }),
    );
    r.backup.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ListBackupsAndTopLevelPrefixes',
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': ['', BUCKET_PREFIXES.backups, `${BUCKET_PREFIXES.backups}*`] } },
      }),
    );
    r.backup.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyViaS3',
        actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [key.keyArn],
        conditions: viaService('s3'),
      }),
    );

    const apiPolicy = r.api.node.findChild('DefaultPolicy');
    ackArnWildcard(apiPolicy, bucket, `/${BUCKET_PREFIXES.files}*`,
      `Objects under ${BUCKET_PREFIXES.files} (the Files API keeps every tenant's files there, at files/<tenant id>/<file id>, the tenant id from the authorizer); nothing else in the bucket.`);
    ackWildcard(apiPolicy, `Resource::arn:${stack.partition}:sagemaker:${stack.region}:${stack.account}:endpoint/${cfg.prefix}-*`,
      "This stage's SageMaker endpoints only: the model registry names an endpoint per model version, and infra/README.md names them <prefix>-<model>.");
    ackArnWildcard(r.backup.node.findChild('DefaultPolicy'), bucket, `/${BUCKET_PREFIXES.backups}*`,
      'Backup parts and manifests live under backups/<id>/; the function writes them and prunes old backups there, nothing else.');
  }
}
