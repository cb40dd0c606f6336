import { DEFAULT_EMF_NAMESPACE, FUNCTION_NAMES, METRICS_NAMESPACE_VAR } from '../lib/config';
import { resources, template } from './helpers';

const t = template('dev');
const [[topicId]] = resources(t, 'AWS::SNS::Topic');
const alarms: Record<string, any> = Object.fromEntries(
  resources(t, 'AWS::CloudWatch::Alarm')
    .filter(([, a]) => typeof a.Properties.AlarmName === 'string')
    .map(([, a]) => [a.Properties.AlarmName.replace('tenantai-dev-', ''), a.Properties]),
);

test('every alarm notifies the alerts topic when it fires and when it clears', () => {
  expect(Object.keys(alarms).length).toBeGreaterThanOrEqual(16);
  for (const a of Object.values(alarms)) {
    expect(a.AlarmActions).toEqual([{ Ref: topicId }]);
    expect(a.OKActions).toEqual([{ Ref: topicId }]);
    expect(a.TreatMissingData).toBe('notBreaching');
    expect(a.AlarmDescription.length).toBeGreaterThan(10);
  }
});

test('jobs-dlq: any message waiting or taken by the workers’ dead-letter loop', () => {
  const a = alarms['jobs-dlq-not-empty'];
  expect(a).toMatchObject({ Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold' });
  expect(a.Metrics.find((m: any) => m.Expression).Expression).toBe('FILL(visible, 0) + FILL(received, 0)');
  const [queueId] = resources(t, 'AWS::SQS::Queue').find(([, q]) => q.Properties.QueueName === 'tenantai-dev-jobs-dlq')!;
  const stats = a.Metrics.filter((m: any) => m.MetricStat).map((m: any) => m.MetricStat);
  expect(stats.map((m: any) => `${m.Metric.MetricName} ${m.Stat}`).sort()).toEqual(['ApproximateNumberOfMessagesVisible Maximum', 'NumberOfMessagesReceived Sum']);
  for (const m of stats) expect(m.Metric.Dimensions).toEqual([{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }]);
});

test.each(['usage-dlq', 'schedules-dlq'])('%s: any message at all', (dlq) => {
  const a = alarms[`${dlq}-not-empty`];
  expect(a).toMatchObject({ MetricName: 'ApproximateNumberOfMessagesVisible', Namespace: 'AWS/SQS', Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold' });
  const [queueId] = resources(t, 'AWS::SQS::Queue').find(([, q]) => q.Properties.QueueName === `tenantai-dev-${dlq}`)!;
  expect(a.Dimensions).toEqual([{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }]);
});

test('oldest message age on the usage and jobs queues', () => {
  expect(alarms['usage-oldest-message']).toMatchObject({ MetricName: 'ApproximateAgeOfOldestMessage', Threshold: 600 });
  expect(alarms['jobs-oldest-message']).toMatchObject({ MetricName: 'ApproximateAgeOfOldestMessage', Threshold: 3600 });
});

test('5xx rate of the tenant API as a share of requests', () => {
  expect(alarms['api-5xx-rate']).toMatchObject({ Namespace: 'AWS/ApiGateway', MetricName: '5XXError', Statistic: 'Average', Threshold: 0.01, EvaluationPeriods: 3 });
  expect(JSON.stringify(alarms['api-5xx-rate'].Dimensions)).toContain('tenantai-dev-api');
});

test('throttles on every function, errors on the queue and schedule consumers, worker errors', () => {
  for (const n of FUNCTION_NAMES) expect(alarms[`${n}-throttles`]).toMatchObject({ Namespace: 'AWS/Lambda', MetricName: 'Throttles', Threshold: 1 });
  for (const n of ['metering', 'cost-alerts', 'backup']) expect(alarms[`${n}-errors`]).toMatchObject({ MetricName: 'Errors', Threshold: 1 });
  expect(alarms['worker-errors']).toMatchObject({ Namespace: 'tenantai/dev', MetricName: 'worker_errors', Statistic: 'Sum', Threshold: 10 });
  const [[, filter]] = resources(t, 'AWS::Logs::MetricFilter');
  expect(filter.Properties.FilterPattern).toBe('{ $.level = "ERROR" }');
});

test('the dashboard shows requests, latency, overhead, cache hit rate, tokens, spend, queue depth, worker throughput', () => {
  const [[, d]] = resources(t, 'AWS::CloudWatch::Dashboard');
  const body = JSON.stringify(d.Properties.DashboardBody);
  for (const title of ['Requests', 'Latency', 'overhead', 'Cache hit rate', 'Tokens', 'Spend', 'Queue depth', 'Worker throughput']) {
    expect(body).toContain(title);
  }
  for (const metric of ['latency_ms', 'overhead_ms', 'cache_hits', 'tokens', 'cost_micros', 'NumberOfMessagesDeleted', 'RunningTaskCount']) {
    expect(body).toContain(metric);
  }
  // The stage's own namespace, as every function is told (TENANTAI_METRICS_NAMESPACE).
  expect(body).toContain('\\"tenantai/dev\\"');
  expect(body).not.toContain(`\\"${DEFAULT_EMF_NAMESPACE}\\"`);
  const prodBody = JSON.stringify(resources(template('prod'), 'AWS::CloudWatch::Dashboard')[0][1].Properties.DashboardBody);
  expect(prodBody).toContain('\\"tenantai/prod\\"');
  expect(prodBody).not.toContain('\\"tenantai/dev\\"');
});

test('every function writes its EMF metrics to the namespace the dashboard reads', () => {
  for (const [stage, tpl] of [['dev', t], ['prod', template('prod')]] as const) {
    for (const [, f] of resources(tpl, 'AWS::Lambda::Function')) {
      expect(f.Properties.Environment.Variables[METRICS_NAMESPACE_VAR]).toBe(`tenantai/${stage}`);
    }
  }
});

test('the EMF namespace and metric names are the ones shared/src/gateway/telemetry.rs writes', () => {
  const src = require('fs').readFileSync(require('path').join(__dirname, '..', '..', 'shared', 'src', 'gateway', 'telemetry.rs'), 'utf8');
  expect(src).toContain(`pub const NAMESPACE_VAR: &str = "${METRICS_NAMESPACE_VAR}"`);
  expect(src).toContain(`pub const DEFAULT_NAMESPACE: &str = "${DEFAULT_EMF_NAMESPACE}"`);
  expect(src).toContain('"Namespace": namespace');
  for (const m of ['latency_ms', 'overhead_ms', 'backend_ms', 'cache_hits', 'tokens', 'inputs', 'cost_micros']) expect(src).toContain(`{"Name": "${m}"`);
});
