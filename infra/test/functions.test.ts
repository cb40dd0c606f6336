import * as fs from 'fs';
import * as path from 'path';
import { FUNCTION_NAMES, stageConfig } from '../lib/config';
import { API_FILE_ACTIONS } from '../lib/functions';
import { asArray, resources, statementsOf, template } from './helpers';

const dev = template('dev');
const prod = template('prod');
const fns = (t = dev) => Object.fromEntries(resources(t, 'AWS::Lambda::Function').map(([id, f]) => [f.Properties.FunctionName, { id, f }]));
const rust = (file: string) => fs.readFileSync(path.join(__dirname, '..', '..', file), 'utf8');

test('six functions: arm64, provided.al2023, bootstrap handler, sized per the stage', () => {
  for (const [t, stage] of [[dev, 'dev'], [prod, 'prod']] as const) {
    const cfg = stageConfig((k) => (k === 'stage' ? stage : undefined));
    const all = fns(t);
    expect(Object.keys(all).sort()).toEqual(FUNCTION_NAMES.map((n) => `tenantai-${stage}-${n}`).sort());
    for (const name of FUNCTION_NAMES) {
      const { f } = all[`tenantai-${stage}-${name}`];
      const sizing = cfg.functions[name];
      expect(f.Properties).toMatchObject({
        Runtime: 'provided.al2023',
        Architectures: ['arm64'],
        Handler: 'bootstrap',
        MemorySize: sizing.memoryMb,
        Timeout: sizing.timeout.toSeconds(),
        ReservedConcurrentExecutions: sizing.reservedConcurrency,
      });
      expect(f.Properties.KmsKeyArn).toBeDefined();
      expect(f.Properties.LoggingConfig.LogGroup).toBeDefined();
    }
  }
});

test('the environment names are the ones the Rust code reads', () => {
  const lambda = rust('shared/src/lambda.rs');
  const authorizer = rust('functions/authorizer/src/main.rs');
  const reads = (src: string, name: string) => src.includes(`"${name}"`);
  const all = fns();
  const env = (n: string) => all[`tenantai-dev-${n}`].f.Properties.Environment.Variables;
  for (const name of FUNCTION_NAMES) {
    const vars = env(name);
    for (const v of ['TENANTAI_RESOURCE_PREFIX', 'TENANTAI_TABLE', 'TENANTAI_BUCKET']) {
      expect(reads(lambda, v)).toBe(true);
      expect(vars[v]).toBeDefined();
    }
    expect(vars.TENANTAI_RESOURCE_PREFIX).toBe('tenantai-dev');
  }
  expect(reads(lambda, 'TENANTAI_ALERTS_TOPIC_ARN')).toBe(true);
  expect(env('cost-alerts').TENANTAI_ALERTS_TOPIC_ARN).toEqual({ Ref: expect.stringMatching(/Alerts/) });
  expect(reads(authorizer, 'TENANTAI_AUTH_CACHE_SECS')).toBe(true);
  expect(env('authorizer').TENANTAI_AUTH_CACHE_SECS).toBe('30');
  expect(env('backup')).toMatchObject({ TENANTAI_BACKUP_KEEP_DAILY: '7', TENANTAI_BACKUP_KEEP_MONTHLY: '3' });
  // The table's name is the prefix, as Resources::named makes it.
  expect(env('api').TENANTAI_TABLE).toEqual({ Ref: expect.stringMatching(/Table/) });
  // The jobs queue a new batch's validation job goes to: a name ending -jobs (its DLQ
  // that name with -dlq), as resources_from_env requires.
  expect(reads(lambda, 'TENANTAI_JOBS_QUEUE')).toBe(true);
  expect(lambda).toContain(`q.ends_with("-jobs")`);
  expect(lambda).toContain(`format!("{q}-dlq")`);
  const [queueId, attr] = env('api').TENANTAI_JOBS_QUEUE['Fn::GetAtt'];
  expect(attr).toBe('QueueName');
  expect(dev.toJSON().Resources[queueId].Properties.QueueName).toBe('tenantai-dev-jobs');
});

test('metering: SQS source with partial batch failures and a batching window', () => {
  const all = fns();
  const [[, esm]] = resources(dev, 'AWS::Lambda::EventSourceMapping');
  expect(esm.Properties).toMatchObject({
    FunctionName: { Ref: all['tenantai-dev-metering'].id },
    FunctionResponseTypes: ['ReportBatchItemFailures'],
    MaximumBatchingWindowInSeconds: 5,
    BatchSize: 100,
  });
  expect(JSON.stringify(esm.Properties.EventSourceArn)).toMatch(/Usage/);
});

test('scheduled functions send failed asynchronous runs to the schedules DLQ', () => {
  const all = fns();
  for (const name of ['cost-alerts', 'backup']) {
    const { f } = all[`tenantai-dev-${name}`];
    expect(JSON.stringify(f.Properties.DeadLetterConfig.TargetArn)).toMatch(/SchedulesDlq/);
  }
});

// The actions each function's role may hold, on anything; nothing else.
const ALLOWED: Record<string, string[]> = {
  api: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem',
    'sqs:SendMessage', 'sqs:GetQueueUrl', 's3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload',
    'sts:AssumeRole', 'sts:TagSession', 'sagemaker:InvokeEndpoint', 'kms:Decrypt', 'kms:GenerateDataKey', 'logs:CreateLogStream', 'logs:PutLogEvents'],
  admin: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem',
    'kms:Decrypt', 'kms:GenerateDataKey', 'logs:CreateLogStream', 'logs:PutLogEvents'],
  authorizer: ['dynamodb:GetItem', 'kms:Decrypt', 'logs:CreateLogStream', 'logs:PutLogEvents'],
  metering: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem',
    'sqs:SendMessage', 'sqs:GetQueueUrl', 'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes',
    'kms:Decrypt', 'kms:GenerateDataKey', 'logs:CreateLogStream', 'logs:PutLogEvents'],
  'cost-alerts': ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'sns:Publish',
    'sqs:SendMessage', 'kms:Decrypt', 'kms:GenerateDataKey', 'kms:Encrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'logs:CreateLogStream', 'logs:PutLogEvents'],
  backup: ['dynamodb:Scan', 'dynamodb:DescribeTable', 's3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload', 's3:ListBucket',
    'sqs:SendMessage', 'kms:Decrypt', 'kms:GenerateDataKey', 'kms:Encrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'logs:CreateLogStream', 'logs:PutLogEvents'],
};

const roleOf = (name: string, t = dev) => fns(t)[`tenantai-dev-${name}`].f.Properties.Role['Fn::GetAtt'][0] as string;

describe('least privilege per function role', () => {
  test.each(FUNCTION_NAMES)('%s holds only its own actions, none a wildcard', (name) => {
    const actions = statementsOf(dev, roleOf(name)).filter((s) => s.Effect === 'Allow').flatMap((s) => asArray(s.Action));
    expect(actions.length).toBeGreaterThan(0);
    for (const a of actions) {
      expect(ALLOWED[name]).toContain(a);
      expect(a).not.toMatch(/(^\*$|:\*$)/);
    }
  });

  test.each(FUNCTION_NAMES)('%s has no managed policy and writes only its own log group', (name) => {
    const role = dev.toJSON().Resources[roleOf(name)];
    expect(role.Properties.ManagedPolicyArns).toBeUndefined();
    const logs = statementsOf(dev, roleOf(name)).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('logs:')));
    expect(logs).toHaveLength(1);
    expect(JSON.stringify(logs[0].Resource)).toMatch(new RegExp(`Functions${name.replace('-', '')}Logs`));
  });

  test('only backup may scan, and only the base table (no index ARN anywhere)', () => {
    for (const name of FUNCTION_NAMES) {
      const sts = statementsOf(dev, roleOf(name));
      const scans = sts.some((s) => asArray(s.Action).includes('dynamodb:Scan'));
      expect(scans).toBe(name === 'backup');
      for (const s of sts.filter((x) => asArray(x.Action).some((a: string) => a.startsWith('dynamodb:')))) {
        expect(JSON.stringify(s.Resource)).not.toMatch(/index/);
      }
    }
  });

  test('KMS use through a named service only, except the CDK-made queue grants', () => {
    for (const name of FUNCTION_NAMES) {
      for (const s of statementsOf(dev, roleOf(name)).filter((x) => asArray(x.Action).some((a: string) => a.startsWith('kms:')))) {
        const via = s.Condition?.StringEquals?.['kms:ViaService'];
        // The CDK's own queue grants (the SQS event source, the Lambda DLQ) carry none.
        if (!via) {
          expect(['metering', 'cost-alerts', 'backup']).toContain(name);
          expect(asArray(s.Resource)).toHaveLength(1);
        }
      }
    }
  });

  test('the authorizer reads only (GetItem)', () => {
    const ddb = statementsOf(dev, roleOf('authorizer')).flatMap((s) => asArray(s.Action)).filter((a: string) => a.startsWith('dynamodb:'));
    expect(ddb).toEqual(['dynamodb:GetItem']);
  });

  test('the api: the Files API’s objects under files/ only, with its own role', () => {
    const s3 = statementsOf(dev, roleOf('api')).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('s3:')));
    expect(s3).toHaveLength(1);
    // PutObject covers single PUTs and multipart (create, upload part, complete).
    expect(asArray(s3[0].Action).sort()).toEqual([...API_FILE_ACTIONS].sort());
    expect(asArray(s3[0].Action)).not.toContain('s3:ListBucket');
    const res = asArray(s3[0].Resource).map((r) => JSON.stringify(r));
    expect(res).toHaveLength(1);
    expect(res[0]).toMatch(/DataBucket[0-9A-F]{8}","Arn"\]\},"\/files\/\*"/);
    // With tenant credentials on too: S3 calls never go with the tenant role.
    const t = template('devTenantCredentials');
    const id = roleOf('api', t);
    expect(statementsOf(t, id).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('s3:')))).toEqual(s3);
  });

  test('the api sends usage events and validation jobs, and nothing to a DLQ', () => {
    const sqs = statementsOf(dev, roleOf('api')).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('sqs:')));
    expect(sqs).toHaveLength(1);
    expect(asArray(sqs[0].Action).sort()).toEqual(['sqs:GetQueueUrl', 'sqs:SendMessage']);
    const targets = asArray(sqs[0].Resource).map((r: any) => r['Fn::GetAtt'][0]);
    const names = targets.map((q: string) => dev.toJSON().Resources[q].Properties.QueueName).sort();
    expect(names).toEqual(['tenantai-dev-jobs', 'tenantai-dev-usage']);
  });

  test('the api may invoke this stage’s SageMaker endpoints only', () => {
    const st = statementsOf(dev, roleOf('api')).find((s) => asArray(s.Action).includes('sagemaker:InvokeEndpoint'));
    expect(st.Resource).toBe('arn:aws:sagemaker:eu-west-1:111122223333:endpoint/tenantai-dev-*');
  });
});
