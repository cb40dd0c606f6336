import * as fs from 'fs';
import * as path from 'path';
import { Duration } from 'aws-cdk-lib';
import { stageConfig } from '../lib/config';
import { HAND_BACK_MARGIN, WORKER_ITEM_ACTIONS, WORKER_PARTITION_KEYS, WORKER_READ_PARTITION_KEYS, WORKER_STOP_TIMEOUT } from '../lib/workers';
import { asArray, build, resources, statementsOf, template } from './helpers';

const rust = (file: string) => fs.readFileSync(path.join(__dirname, '..', '..', file), 'utf8');
const rustTree = (dir: string): string =>
  fs.readdirSync(path.join(__dirname, '..', '..', dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.rs'))
    .map((e) => fs.readFileSync(path.join(e.parentPath, e.name), 'utf8'))
    .join('\n');
const container = (t = dev) => {
  const [, td] = one(t, 'AWS::ECS::TaskDefinition');
  return td.Properties.ContainerDefinitions[0];
};
const containerEnv = (t = dev): Record<string, any> => Object.fromEntries(container(t).Environment.map((e: any) => [e.Name, e.Value]));

const dev = template('dev');
const prod = template('prod');
const one = (t: any, type: string) => {
  const all = resources(t, type);
  expect(all).toHaveLength(1);
  return all[0];
};

test('GPU instances from the GPU ECS-optimised AMI through its SSM parameter', () => {
  const [, lt] = one(dev, 'AWS::EC2::LaunchTemplate');
  const param = lt.Properties.LaunchTemplateData.ImageId.Ref;
  expect(dev.toJSON().Parameters[param]).toEqual({
    Type: 'AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>',
    Default: '/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id',
  });
});

test('instances: IMDSv2 only with hop limit 1, encrypted root volume, detailed monitoring, spot draining', () => {
  const [, lt] = one(dev, 'AWS::EC2::LaunchTemplate');
  const d = lt.Properties.LaunchTemplateData;
  expect(d.MetadataOptions).toEqual({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
  expect(d.BlockDeviceMappings[0].Ebs).toMatchObject({ Encrypted: true, VolumeType: 'gp3' });
  expect(d.BlockDeviceMappings[0].Ebs.KmsKeyId).toBeDefined();
  expect(d.Monitoring).toEqual({ Enabled: true });
  expect(JSON.stringify(d.UserData)).toContain('ECS_ENABLE_SPOT_INSTANCE_DRAINING=true');
});

test('an on-demand/spot mix from zero, per stage', () => {
  for (const [t, stage] of [[dev, 'dev'], [prod, 'prod']] as const) {
    const cfg = stageConfig((k) => (k === 'stage' ? stage : undefined));
    const [, asg] = one(t, 'AWS::AutoScaling::AutoScalingGroup');
    expect(asg.Properties.MinSize).toBe('0');
    expect(asg.Properties.MaxSize).toBe(String(cfg.worker.maxInstances));
    expect(asg.Properties.MixedInstancesPolicy.InstancesDistribution).toEqual({
      OnDemandBaseCapacity: 0,
      OnDemandPercentageAboveBaseCapacity: cfg.worker.onDemandPercent,
      SpotAllocationStrategy: 'price-capacity-optimized',
    });
    expect(asg.Properties.MixedInstancesPolicy.LaunchTemplate.Overrides.map((o: any) => o.InstanceType)).toEqual(cfg.worker.instanceTypes);
    expect(asg.Properties.NewInstancesProtectedFromScaleIn).toBe(true);
    expect(asg.Properties.NotificationConfigurations[0].TopicARN).toBeDefined();
  }
  const [, prodAsg] = one(prod, 'AWS::AutoScaling::AutoScalingGroup');
  expect(prodAsg.Properties.MixedInstancesPolicy.InstancesDistribution.OnDemandPercentageAboveBaseCapacity).toBeGreaterThan(0);
});

test('capacity provider: managed scaling, termination protection and draining', () => {
  const [cpId, cp] = one(dev, 'AWS::ECS::CapacityProvider');
  expect(cp.Properties.AutoScalingGroupProvider).toMatchObject({
    ManagedScaling: { Status: 'ENABLED', TargetCapacity: 100 },
    ManagedTerminationProtection: 'ENABLED',
    ManagedDraining: 'ENABLED',
  });
  const [, svc] = one(dev, 'AWS::ECS::Service');
  expect(svc.Properties.CapacityProviderStrategy).toEqual([{ CapacityProvider: { Ref: cpId }, Weight: 1 }]);
  expect(svc.Properties.LaunchType).toBeUndefined();
});

test('the container: one GPU, `work`, non-root, read-only root, a SIGTERM drain window, /health checked', () => {
  const [, td] = one(dev, 'AWS::ECS::TaskDefinition');
  expect(td.Properties.RequiresCompatibilities).toEqual(['EC2']);
  expect(td.Properties.NetworkMode).toBe('awsvpc');
  const [c] = td.Properties.ContainerDefinitions;
  expect(c.ResourceRequirements).toEqual([{ Type: 'GPU', Value: '1' }]);
  expect(c.Command).toEqual(['work']);
  expect(c.User).toBe('10001');
  expect(c.ReadonlyRootFilesystem).toBe(true);
  expect(c.Privileged).toBe(false);
  expect(c.StopTimeout).toBe(WORKER_STOP_TIMEOUT.toSeconds());
  expect(c.StopTimeout).toBeLessThan(120); // inside a spot interruption's notice
  expect(c.HealthCheck.Command).toEqual(['CMD', 'curl', '-fsS', 'http://127.0.0.1:8080/health']);
  expect(c.LogConfiguration.LogDriver).toBe('awslogs');
  const env = Object.fromEntries(c.Environment.map((e: any) => [e.Name, e.Value]));
  expect(env).toMatchObject({ TENANTAI_RESOURCE_PREFIX: 'tenantai-dev', TENANTAI_DEVICE: 'cuda:0' });
  expect(JSON.stringify(env.TENANTAI_MODEL)).toMatch(/s3:\/\//);
  expect(JSON.stringify(env.TENANTAI_MODEL)).toContain('/models/all-MiniLM-L6-v2');
  expect(env.TENANTAI_JOBS_QUEUE).toBeDefined();
});

test('the worker loop’s settings: the config’s, with the grace over before SIGKILL', () => {
  for (const t of [dev, prod]) {
    const { batch } = stageConfig(() => undefined).worker;
    const env = containerEnv(t);
    expect(env).toMatchObject({
      TENANTAI_BATCH_WORKERS: String(batch.workers),
      TENANTAI_BATCH_LINE_CONCURRENCY: String(batch.lineConcurrency),
      TENANTAI_BATCH_CHUNK_LINES: String(batch.chunkLines),
      TENANTAI_BATCH_CHUNK_TOKENS: String(batch.chunkTokens),
      TENANTAI_BATCH_VISIBILITY_SECS: '120',
      TENANTAI_BATCH_GRACE_SECS: '90',
      TENANTAI_BATCH_WAIT_SECS: '20',
      TENANTAI_BATCH_RETRY_SECS: String(batch.retry.toSeconds()),
    });
    const stop = container(t).StopTimeout;
    expect(Number(env.TENANTAI_BATCH_GRACE_SECS) + HAND_BACK_MARGIN.toSeconds()).toBeLessThanOrEqual(stop);
    // The heartbeat (every third of the visibility) beats well inside it.
    expect(Number(env.TENANTAI_BATCH_VISIBILITY_SECS)).toBeGreaterThanOrEqual(30);
    const [jobsId] = container(t).Environment.find((e: any) => e.Name === 'TENANTAI_JOBS_QUEUE').Value['Fn::GetAtt'];
    expect(t.toJSON().Resources[jobsId].Properties.QueueName).toMatch(/^tenantai-(dev|prod)-jobs$/);
  }
});

test('a grace the stop timeout cannot hold fails the synthesis', () => {
  const tooLong = Duration.seconds(WORKER_STOP_TIMEOUT.toSeconds() - HAND_BACK_MARGIN.toSeconds() + 1);
  expect(() => build({}, { tweak: (cfg) => ({ ...cfg, worker: { ...cfg.worker, batch: { ...cfg.worker.batch, grace: tooLong } } }) })).toThrow(
    /grace .* stop timeout/,
  );
});

test('every TENANTAI_ variable the worker gets is one the Rust code reads', () => {
  const src = `${rustTree('gpu-worker/src')}\n${rustTree('shared/src')}`;
  const names = Object.keys(containerEnv()).filter((n) => n.startsWith('TENANTAI_'));
  expect(names.length).toBeGreaterThan(10);
  for (const n of names) expect(`${n}: ${src.includes(`"${n}"`)}`).toBe(`${n}: true`);
  // The batch settings are WorkerConfig::from_env's, every one of them.
  const jobs = rust('shared/src/batch/jobs.rs');
  const read = [...jobs.matchAll(/"(TENANTAI_BATCH_[A-Z_]+)"/g)].map((m) => m[1]).sort();
  expect(names.filter((n) => n.startsWith('TENANTAI_BATCH_')).sort()).toEqual(read);
});

test('scaling: step scaling on backlog per task, a metric-math expression over the jobs queue and running tasks', () => {
  const [, target] = one(dev, 'AWS::ApplicationAutoScaling::ScalableTarget');
  expect(target.Properties).toMatchObject({ MinCapacity: 0, MaxCapacity: 2, ScalableDimension: 'ecs:service:DesiredCount' });
  const policies = resources(dev, 'AWS::ApplicationAutoScaling::ScalingPolicy').map(([id, p]) => ({ id, p: p.Properties }));
  expect(policies).toHaveLength(2);
  for (const { p } of policies) expect(p.PolicyType).toBe('StepScaling');
  const alarms = resources(dev, 'AWS::CloudWatch::Alarm').filter(([, a]) => policies.some(({ id }) => JSON.stringify(a.Properties.AlarmActions).includes(id)));
  expect(alarms).toHaveLength(2);
  for (const [, a] of alarms) {
    const expr = a.Properties.Metrics.find((m: any) => m.Expression);
    expect(expr.Expression).toContain('(visible + inflight) / FILL(tasks, 0)');
    const names = a.Properties.Metrics.filter((m: any) => m.MetricStat).map((m: any) => m.MetricStat.Metric.MetricName).sort();
    expect(names).toEqual(['ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesVisible', 'RunningTaskCount']);
  }
  const upper = alarms.find(([, a]) => a.Properties.ComparisonOperator === 'GreaterThanOrEqualToThreshold')!;
  expect(upper[1].Properties.Threshold).toBe(20);
});

describe('the task role', () => {
  const [taskRoleId] = resources(dev, 'AWS::IAM::Role').find(([, r]) => r.Properties.RoleName === 'tenantai-dev-worker-task')!;
  const sts = statementsOf(dev, taskRoleId);
  const queueName = (arn: any) => dev.toJSON().Resources[arn['Fn::GetAtt'][0]].Properties.QueueName;
  const on = (prefix: string) => sts.filter((s) => asArray(s.Action).some((a: string) => a.startsWith(prefix)));

  test('no wildcard action, no Scan, nothing outside SQS, DynamoDB, S3 and the key', () => {
    const actions = sts.flatMap((s) => asArray(s.Action));
    expect(actions).not.toContain('dynamodb:Scan');
    for (const a of actions) {
      expect(a).not.toMatch(/(^\*$|:\*$)/);
      expect(a).toMatch(/^(sqs|dynamodb|s3|kms):/);
    }
  });

  test('works the jobs queue and its DLQ, sends chunk jobs to the jobs queue and line usage to the usage queue', () => {
    const byQueue: Record<string, string[]> = {};
    for (const s of on('sqs:')) {
      for (const r of asArray(s.Resource)) (byQueue[queueName(r)] ??= []).push(...asArray(s.Action));
    }
    const work = ['sqs:ChangeMessageVisibility', 'sqs:DeleteMessage', 'sqs:GetQueueUrl', 'sqs:ReceiveMessage'];
    expect(Object.keys(byQueue).sort()).toEqual(['tenantai-dev-jobs', 'tenantai-dev-jobs-dlq', 'tenantai-dev-usage']);
    expect(byQueue['tenantai-dev-jobs'].sort()).toEqual([...work, 'sqs:SendMessage'].sort());
    // Nothing sends to the DLQ (the queue's redrive does).
    expect(byQueue['tenantai-dev-jobs-dlq'].sort()).toEqual(work);
    expect(byQueue['tenantai-dev-usage'].sort()).toEqual(['sqs:GetQueueUrl', 'sqs:SendMessage']);
  });

  test('table items: batches, files and budgets by LeadingKeys; tenants and models read only', () => {
    const ddb = on('dynamodb:');
    expect(ddb).toHaveLength(2);
    for (const s of ddb) {
      expect(JSON.stringify(s.Resource)).toMatch(/Table/);
      expect(JSON.stringify(s.Resource)).not.toMatch(/index/);
      expect(s.Condition.Null).toEqual({ 'dynamodb:LeadingKeys': 'false' });
    }
    const keysOf = (s: any) => s.Condition['ForAllValues:StringLike']['dynamodb:LeadingKeys'];
    const write = ddb.find((s) => asArray(s.Action).includes('dynamodb:PutItem'));
    const read = ddb.find((s) => !asArray(s.Action).includes('dynamodb:PutItem'));
    expect(keysOf(write)).toEqual(['BATCH#*', 'FILE#*', 'BUDGET#*']);
    expect(asArray(write.Action).sort()).toEqual(
      ['dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:UpdateItem'].sort(),
    );
    expect(keysOf(read)).toEqual(['TENANTS', 'MODELS']);
    expect(asArray(read.Action).sort()).toEqual(['dynamodb:GetItem', 'dynamodb:Query']);
    // Not the request path's items: keys, rate limits, caches, usage, audit, alerts.
    for (const k of [...keysOf(write), ...keysOf(read)]) expect(k).not.toMatch(/^(TENANT#|KEY#|RL#|CACHE#|USAGE#|AUDIT#|ALERTS#|EVENT#|ADMIN)/);
  });

  test('the partitions are the ones the Rust code writes', () => {
    expect(rust('shared/src/batch/batches.rs')).toContain('format!("BATCH#{tenant_id}")');
    expect(rust('shared/src/batch/files.rs')).toContain('format!("FILE#{tenant_id}")');
    expect(rust('shared/src/billing/budget.rs')).toContain('format!("BUDGET#{tenant_id}")');
    expect(rust('shared/src/tenancy/tenants.rs')).toContain('pub const TENANTS_PK: &str = "TENANTS";');
    expect(rust('shared/src/gateway/models.rs')).toContain('pub const MODELS_PK: &str = "MODELS";');
    expect(WORKER_PARTITION_KEYS).toEqual(['BATCH#*', 'FILE#*', 'BUDGET#*']);
    expect(WORKER_READ_PARTITION_KEYS).toEqual(['TENANTS', 'MODELS']);
    // The adapter's clearing of an expired item before a conditional write is a DeleteItem.
    expect(rust('shared/src/store/aws/table.rs')).toMatch(/async fn clear_expired[\s\S]*?\.delete_item\(\)/);
    expect(WORKER_ITEM_ACTIONS).toContain('dynamodb:DeleteItem');
  });

  test('objects: reads models, inputs and chunk results; writes chunk results and output files; deletes nothing', () => {
    const s3 = on('s3:');
    const grants: Record<string, string[]> = {};
    for (const s of s3) {
      for (const r of asArray(s.Resource)) {
        const m = JSON.stringify(r).match(/"\/([a-z]+)\/\*"/);
        expect(m).not.toBeNull();
        (grants[m![1]] ??= []).push(...asArray(s.Action));
      }
    }
    expect(Object.keys(grants).sort()).toEqual(['batches', 'files', 'models']);
    expect(grants.models).toEqual(['s3:GetObject']);
    for (const p of ['files', 'batches']) expect(grants[p].sort()).toEqual(['s3:AbortMultipartUpload', 's3:GetObject', 's3:PutObject']);
  });

  test('the key only through SQS, S3 and DynamoDB', () => {
    const kms = on('kms:');
    expect(kms).toHaveLength(1);
    expect(kms[0].Condition.StringEquals['kms:ViaService'].sort()).toEqual(
      ['dynamodb.eu-west-1.amazonaws.com', 's3.eu-west-1.amazonaws.com', 'sqs.eu-west-1.amazonaws.com'],
    );
  });
});

test('Container Insights on the cluster (the running-task metric comes from it)', () => {
  const [, cluster] = one(dev, 'AWS::ECS::Cluster');
  expect(cluster.Properties.ClusterSettings).toEqual([{ Name: 'containerInsights', Value: 'enabled' }]);
});

test('the VPC logs rejected flows and reaches S3 and DynamoDB through gateway endpoints', () => {
  one(dev, 'AWS::EC2::FlowLog');
  const endpoints = resources(dev, 'AWS::EC2::VPCEndpoint').map(([, e]) => JSON.stringify(e.Properties.ServiceName));
  expect(endpoints.some((s) => s.includes('.s3'))).toBe(true);
  expect(endpoints.some((s) => s.includes('.dynamodb'))).toBe(true);
});
