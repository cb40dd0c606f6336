// EventBridge Scheduler schedules: cost alerts and backups. Each delivers an
// EventBridge-shaped event whose `time` is the scheduled time (the run's "now").
import { Duration, Stack } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as targets from 'aws-cdk-lib/aws-scheduler-targets';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { StageConfig } from './config';
import { ackArnWildcard } from './nag';

export interface SchedulesProps {
  readonly cfg: StageConfig;
  readonly key: kms.IKey;
  readonly costAlerts: lambda.IFunction;
  readonly backup: lambda.IFunction;
  readonly dlq: sqs.IQueue;
}

/** When each scheduled function runs (UTC). */
export function scheduleExpressions(cfg: StageConfig) {
  return {
    costAlerts: cfg.prod ? scheduler.ScheduleExpression.rate(Duration.minutes(15)) : scheduler.ScheduleExpression.rate(Duration.hours(1)),
    // 03:17 UTC daily: off the hour, when traffic is low.
    backup: scheduler.ScheduleExpression.cron({ minute: '17', hour: '3' }),
  };
}

export class Schedules extends Construct {
  readonly costAlerts: scheduler.Schedule;
  readonly backup: scheduler.Schedule;

  constructor(scope: Construct, id: string, props: SchedulesProps) {
    super(scope, id);
    const { cfg } = props;
    const stack = Stack.of(this);
    const group = new scheduler.ScheduleGroup(this, 'Group', { scheduleGroupName: cfg.prefix });
    const event = (name: string) =>
      scheduler.ScheduleTargetInput.fromObject({
        version: '0',
        id: scheduler.ContextAttribute.executionId,
        'detail-type': 'Scheduled Event',
        source: 'aws.scheduler',
        account: stack.account,
        time: scheduler.ContextAttribute.scheduledTime,
        region: stack.region,
        resources: [scheduler.ContextAttribute.scheduleArn],
        detail: { schedule: name },
      });
    const expressions = scheduleExpressions(cfg);
    const schedule = (id_: string, name: string, fn: lambda.IFunction, expression: scheduler.ScheduleExpression) =>
      new scheduler.Schedule(this, id_, {
        scheduleName: `${cfg.prefix}-${name}`,
        description: `tenantai ${cfg.stage}: ${name}`,
        scheduleGroup: group,
        schedule: expression,
        key: props.key,
        target: new targets.LambdaInvoke(fn, {
          input: event(name),
          deadLetterQueue: props.dlq,
          retryAttempts: 3,
          maxEventAge: Duration.hours(1),
        }),
      });
    this.costAlerts = schedule('CostAlerts', 'cost-alerts', props.costAlerts, expressions.costAlerts);
    this.backup = schedule('Backup', 'backup', props.backup, expressions.backup);
    // The scheduler's invoke role (one per target function, made by the CDK) names the
    // function and its versions (`<arn>:*`).
    for (const fn of [props.costAlerts, props.backup]) {
      for (const c of stack.node.children) {
        if (c.node.id.startsWith('SchedulerRoleForTarget-')) {
          ackArnWildcard(c.node.findChild('DefaultPolicy'), fn, ':*',
            'lambda:InvokeFunction on the scheduled function and its versions (the CDK-made scheduler role); no other function.');
        }
      }
    }
  }
}
