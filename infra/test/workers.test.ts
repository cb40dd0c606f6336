import { stageConfig } from '../lib/config';
import { WORKER_STOP_TIMEOUT } from '../lib/workers';
import { asArray, resources, statementsOf, template } from './helpers';

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

test('the task role consumes the jobs queue and never scans', () => {
  const [taskRoleId] = resources(dev, 'AWS::IAM::Role').find(([, r]) => r.Properties.RoleName === 'tenantai-dev-worker-task')!;
  const sts = statementsOf(dev, taskRoleId);
  const actions = sts.flatMap((s) => asArray(s.Action));
  for (const a of ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility']) expect(actions).toContain(a);
  expect(actions).not.toContain('dynamodb:Scan');
  for (const a of actions) expect(a).not.toMatch(/(^\*$|:\*$)/);
  const consume = sts.find((s) => asArray(s.Action).includes('sqs:ReceiveMessage'));
  expect(JSON.stringify(consume.Resource)).toMatch(/QueuesJobs[0-9A-F]{8}/);
  expect(JSON.stringify(consume.Resource)).not.toMatch(/Dlq|Usage/);
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
