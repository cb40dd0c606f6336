import { stageConfig } from '../lib/config';
import { resources, template } from './helpers';

const ctx = (values: Record<string, string>) => (k: string) => values[k];

test('stage must be dev or prod', () => {
  expect(() => stageConfig(ctx({ stage: 'staging' }))).toThrow(/dev or prod/);
  expect(stageConfig(ctx({})).stage).toBe('dev');
});

test('JWT settings come together', () => {
  expect(() => stageConfig(ctx({ jwksUrl: 'https://idp.example/jwks' }))).toThrow(/jwtIssuer/);
  const cfg = stageConfig(ctx({ jwksUrl: 'https://idp.example/jwks', jwtIssuer: 'i', jwtAudience: 'a' }));
  expect(cfg.jwt).toEqual({ jwksUrl: 'https://idp.example/jwks', issuer: 'i', audience: 'a' });
});

test('reserveConcurrency=false reserves nothing', () => {
  const cfg = stageConfig(ctx({ reserveConcurrency: 'false' }));
  for (const f of Object.values(cfg.functions)) expect(f.reservedConcurrency).toBeUndefined();
});

test('every resource name is derived from the stage', () => {
  const nameProps = ['TableName', 'QueueName', 'TopicName', 'FunctionName', 'RoleName', 'Name', 'ClusterName', 'ServiceName',
    'AutoScalingGroupName', 'LaunchTemplateName', 'LogGroupName', 'AlarmName', 'DashboardName', 'BucketName', 'EndpointName', 'ModelName', 'ScheduleGroupName', 'GroupName'];
  for (const stage of ['dev', 'prod'] as const) {
    const t = template(stage);
    let named = 0;
    for (const [id, r] of Object.entries(t.toJSON().Resources) as [string, any][]) {
      for (const p of nameProps) {
        const v = r.Properties?.[p];
        if (typeof v !== 'string' || r.Type === 'AWS::ApiGateway::GatewayResponse') continue;
        if (r.Type.startsWith('AWS::IAM::') && p === 'Name') continue;
        named++;
        expect(`${id} ${v}`).toMatch(new RegExp(`tenantai-${stage}|tenantai/${stage}|/${stage}$|^${stage}$`));
      }
    }
    expect(named).toBeGreaterThan(40);
    // Buckets carry account and region (their names are global).
    for (const [, b] of resources(t, 'AWS::S3::Bucket')) expect(JSON.stringify(b.Properties.BucketName)).toContain(`tenantai-${stage}-`);
  }
});
