// Alarms to the alerts topic and one dashboard, from the metrics AWS publishes and the
// EMF metrics the functions write (namespace `tenantai/<stage>`, dimensions [model] and []).
import { Duration } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { emfNamespace, FUNCTION_NAMES, FunctionName, StageConfig } from './config';
import { Queues } from './queues';
import { Workers } from './workers';

export interface ObservabilityProps {
  readonly cfg: StageConfig;
  readonly topic: sns.ITopic;
  readonly queues: Queues;
  readonly tenantApi: apigw.RestApi;
  readonly adminApi: apigw.RestApi;
  readonly fns: Record<FunctionName, lambda.Function>;
  readonly workers: Workers;
}

export class Observability extends Construct {
  readonly alarms: cloudwatch.Alarm[] = [];
  readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: ObservabilityProps) {
    super(scope, id);
    const { cfg, queues, workers } = props;
    const action = new actions.SnsAction(props.topic);
    const alarm = (id_: string, description: string, metric: cloudwatch.IMetric, threshold: number, periods = 1, op = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD) => {
      const a = new cloudwatch.Alarm(this, id_, {
        alarmName: `${cfg.prefix}-${id_}`,
        alarmDescription: description,
        metric,
        threshold,
        evaluationPeriods: periods,
        datapointsToAlarm: periods,
        comparisonOperator: op,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      a.addAlarmAction(action);
      a.addOkAction(action);
      this.alarms.push(a);
      return a;
    };
    const five = Duration.minutes(5);

    // Dead letters: any message at all.
    const dlqs: [string, sqs.Queue, string][] = [
      ['usage-dlq', queues.usageDlq, 'Usage events the metering function could not fold (malformed, or failed 5 times). See infra/README.md: Alarms.'],
      ['schedules-dlq', queues.schedulesDlq, 'A cost-alerts or backup run that failed after its retries. See infra/README.md: Alarms.'],
    ];
    for (const [name, q, description] of dlqs) {
      alarm(`${name}-not-empty`, description, q.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: five }), 1);
    }
    // The workers drain the jobs DLQ themselves (failing the dead item's lines, or its
    // batch), usually before a visible-count sample sees it: count their receives too.
    alarm('jobs-dlq-not-empty', 'Batch work items that failed 5 times (their lines, or their batch, were failed). See infra/README.md: Alarms.',
      new cloudwatch.MathExpression({
        label: 'Jobs dead-lettered (waiting or taken by the workers)',
        expression: 'FILL(visible, 0) + FILL(received, 0)',
        usingMetrics: {
          visible: queues.jobsDlq.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: five }),
          received: queues.jobsDlq.metricNumberOfMessagesReceived({ statistic: 'Sum', period: five }),
        },
        period: five,
      }), 1);
    // Oldest message: metering lagging (10 minutes), workers not keeping up (1 hour).
    alarm('usage-oldest-message', 'Usage events wait over 10 minutes: metering is failing or throttled.', queues.usage.metricApproximateAgeOfOldestMessage({ statistic: 'Maximum', period: five }), 600, 2);
    alarm('jobs-oldest-message', 'A batch work item waits over an hour: no GPU capacity, or the workers fail.', queues.jobs.metricApproximateAgeOfOldestMessage({ statistic: 'Maximum', period: five }), 3600, 2);

    // 5xx rate of the tenant API (Average of 5XXError is the share of requests).
    alarm('api-5xx-rate', 'Over 1% of tenant API requests answered 5xx for 15 minutes.', props.tenantApi.metricServerError({ statistic: 'Average', period: five }), 0.01, 3, cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD);
    alarm('admin-5xx', 'The admin API answered 5xx at least 5 times in 5 minutes.', props.adminApi.metricServerError({ statistic: 'Sum', period: five }), 5);
    // Throttles and errors per function.
    for (const name of FUNCTION_NAMES) {
      const fn = props.fns[name];
      alarm(`${name}-throttles`, `The ${name} function was throttled (reserved concurrency exhausted).`, fn.metricThrottles({ statistic: 'Sum', period: five }), 1);
    }
    for (const name of ['metering', 'cost-alerts', 'backup'] as const) {
      alarm(`${name}-errors`, `The ${name} function failed.`, props.fns[name].metricErrors({ statistic: 'Sum', period: five }), 1);
    }
    alarm('worker-errors', 'GPU workers logged 10 or more errors in 5 minutes.', workers.errors, 10);

    // The dashboard.
    // The namespace every function is given (TENANTAI_METRICS_NAMESPACE, lib/functions.ts).
    const namespace = emfNamespace(cfg);
    const emf = (metricName: string, statistic: string, label?: string) =>
      new cloudwatch.Metric({ namespace, metricName, statistic, period: five, label: label ?? `${metricName} ${statistic}` });
    const api = props.tenantApi;
    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: cfg.prefix,
      defaultInterval: Duration.hours(6),
    });
    const graph = (title: string, left: cloudwatch.IMetric[], right: cloudwatch.IMetric[] = []) =>
      new cloudwatch.GraphWidget({ title, left, right, width: 8, height: 6 });
    this.dashboard.addWidgets(
      graph('Requests (tenant API)', [api.metricCount({ period: five, statistic: 'Sum' })], [
        api.metricClientError({ period: five, statistic: 'Sum' }),
        api.metricServerError({ period: five, statistic: 'Sum' }),
      ]),
      graph('Latency (ms)', [
        api.metricLatency({ period: five, statistic: 'p50' }),
        api.metricLatency({ period: five, statistic: 'p99' }),
        emf('latency_ms', 'p99'),
      ]),
      graph('Gateway overhead (ms, time not spent in a backend)', [emf('overhead_ms', 'p50'), emf('overhead_ms', 'p99'), emf('backend_ms', 'p50')]),
    );
    this.dashboard.addWidgets(
      graph('Cache hit rate (%)', [
        new cloudwatch.MathExpression({
          label: 'cache hit rate',
          expression: '100 * hits / FILL(requests, 1)',
          usingMetrics: { hits: emf('cache_hits', 'Sum'), requests: emf('cache_hits', 'SampleCount') },
          period: five,
        }),
      ]),
      graph('Tokens and inputs', [emf('tokens', 'Sum')], [emf('inputs', 'Sum')]),
      graph('Spend (USD)', [
        new cloudwatch.MathExpression({
          label: 'spend (cost_micros / 1e6)',
          expression: 'FILL(cost, 0) / 1000000',
          usingMetrics: { cost: emf('cost_micros', 'Sum') },
          period: five,
        }),
      ]),
    );
    this.dashboard.addWidgets(
      graph('Queue depth', [
        queues.usage.metricApproximateNumberOfMessagesVisible({ period: five, statistic: 'Maximum', label: 'usage waiting' }),
        queues.jobs.metricApproximateNumberOfMessagesVisible({ period: five, statistic: 'Maximum', label: 'jobs waiting' }),
        queues.jobs.metricApproximateNumberOfMessagesNotVisible({ period: five, statistic: 'Maximum', label: 'jobs in flight' }),
      ], dlqs.map(([name, q]) => q.metricApproximateNumberOfMessagesVisible({ period: five, statistic: 'Maximum', label: name }))),
      graph('Worker throughput', [
        queues.jobs.metricNumberOfMessagesDeleted({ period: five, statistic: 'Sum', label: 'work items done' }),
      ], [workers.runningTasks.with({ period: five, label: 'running tasks' }), workers.errors.with({ label: 'worker errors' })]),
      graph('Backlog per task (the scaling metric)', [workers.backlogPerTask]),
    );
    this.dashboard.addWidgets(
      graph('Function errors', FUNCTION_NAMES.map((n) => props.fns[n].metricErrors({ period: five, statistic: 'Sum', label: n }))),
      graph('Function duration p99 (ms)', FUNCTION_NAMES.map((n) => props.fns[n].metricDuration({ period: five, statistic: 'p99', label: n }))),
      graph('Function throttles', FUNCTION_NAMES.map((n) => props.fns[n].metricThrottles({ period: five, statistic: 'Sum', label: n }))),
    );
  }
}
