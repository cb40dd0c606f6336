import { resources, template } from './helpers';

const dev = template('dev');
const prod = template('prod');
const schedules = (t = dev): Record<string, any> => Object.fromEntries(resources(t, 'AWS::Scheduler::Schedule').map(([, s]) => [s.Properties.Name, s.Properties]));

test('cost alerts and backups run on EventBridge Scheduler', () => {
  const s = schedules();
  expect(Object.keys(s).sort()).toEqual(['tenantai-dev-backup', 'tenantai-dev-cost-alerts']);
  expect(s['tenantai-dev-cost-alerts'].ScheduleExpression).toBe('rate(1 hour)');
  expect(schedules(prod)['tenantai-prod-cost-alerts'].ScheduleExpression).toBe('rate(15 minutes)');
  expect(s['tenantai-dev-backup'].ScheduleExpression).toBe('cron(17 3 * * ? *)');
  for (const p of Object.values(s)) {
    expect(p.State).toBe('ENABLED');
    expect(p.FlexibleTimeWindow).toEqual({ Mode: 'OFF' });
    expect(p.KmsKeyArn).toBeDefined();
  }
});

test('each targets its function with an EventBridge-shaped event whose time is the scheduled time', () => {
  const fns = Object.fromEntries(resources(dev, 'AWS::Lambda::Function').map(([id, f]) => [f.Properties.FunctionName, id]));
  for (const name of ['cost-alerts', 'backup']) {
    const target = schedules()[`tenantai-dev-${name}`].Target;
    expect(target.Arn).toEqual({ 'Fn::GetAtt': [fns[`tenantai-dev-${name}`], 'Arn'] });
    const input = JSON.parse(target.Input);
    expect(input).toMatchObject({ 'detail-type': 'Scheduled Event', time: '<aws.scheduler.scheduled-time>', detail: { schedule: name } });
    expect(target.RetryPolicy).toEqual({ MaximumEventAgeInSeconds: 3600, MaximumRetryAttempts: 3 });
    expect(JSON.stringify(target.DeadLetterConfig.Arn)).toMatch(/SchedulesDlq/);
  }
});

test('the scheduler role may invoke only the scheduled functions', () => {
  const roles = resources(dev, 'AWS::IAM::Role').filter(([, r]) =>
    JSON.stringify(r.Properties.AssumeRolePolicyDocument).includes('scheduler.amazonaws.com'),
  );
  expect(roles.length).toBeGreaterThan(0);
  for (const [id] of roles) {
    const policies = resources(dev, 'AWS::IAM::Policy').filter(([, p]) => p.Properties.Roles.some((r: any) => r.Ref === id));
    for (const [, p] of policies) {
      for (const s of p.Properties.PolicyDocument.Statement) {
        const actions = [s.Action].flat();
        expect(actions.every((a: string) => ['lambda:InvokeFunction', 'sqs:SendMessage', 'kms:Decrypt', 'kms:GenerateDataKey', 'kms:Encrypt', 'kms:ReEncrypt*', 'kms:GenerateDataKey*'].includes(a))).toBe(true);
      }
    }
  }
});
