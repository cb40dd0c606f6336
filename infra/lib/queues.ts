// The queues, named as the Rust code derives them (`store::Resources::named`):
// `<prefix>-usage` and `<prefix>-jobs`, each with `<name>-dlq` after 5 receives.
import { Duration, Validations } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { StageConfig } from './config';

/** `DeadLetter::max_receives` in `shared/src/store/mod.rs`. */
export const MAX_RECEIVES = 5;

export interface QueuesProps {
  readonly cfg: StageConfig;
  readonly key: kms.IKey;
  /** The metering function's timeout: the usage queue's consumer. */
  readonly meteringTimeout: Duration;
}

export class Queues extends Construct {
  readonly usage: sqs.Queue;
  readonly usageDlq: sqs.Queue;
  readonly jobs: sqs.Queue;
  readonly jobsDlq: sqs.Queue;
  /** Failed scheduled runs (EventBridge Scheduler and Lambda async failures). */
  readonly schedulesDlq: sqs.Queue;

  constructor(scope: Construct, id: string, props: QueuesProps) {
    super(scope, id);
    const { cfg, key } = props;
    const common = {
      encryption: sqs.QueueEncryption.KMS,
      encryptionMasterKey: key,
      dataKeyReuse: Duration.minutes(15),
      enforceSSL: true,
    };
    const dlq = (name: string) =>
      new sqs.Queue(this, `${name}Dlq`, {
        ...common,
        queueName: `${cfg.prefix}-${name}-dlq`,
        retentionPeriod: Duration.days(14),
      });
    this.usageDlq = dlq('usage');
    this.jobsDlq = dlq('jobs');
    this.usage = new sqs.Queue(this, 'Usage', {
      ...common,
      queueName: `${cfg.prefix}-usage`,
      visibilityTimeout: Duration.seconds(props.meteringTimeout.toSeconds() * 6),
      retentionPeriod: Duration.days(14),
      deadLetterQueue: { queue: this.usageDlq, maxReceiveCount: MAX_RECEIVES },
    });
    // The worker hides each message it receives for its visibility setting and extends
    // it by heartbeat while it works; the queue's own default is the same.
    const batch = cfg.worker.batch;
    this.jobs = new sqs.Queue(this, 'Jobs', {
      ...common,
      queueName: `${cfg.prefix}-jobs`,
      visibilityTimeout: batch.visibility,
      retentionPeriod: Duration.days(14),
      // Workers long-poll.
      receiveMessageWaitTime: batch.wait,
      deadLetterQueue: { queue: this.jobsDlq, maxReceiveCount: MAX_RECEIVES },
    });
    this.schedulesDlq = new sqs.Queue(this, 'SchedulesDlq', {
      ...common,
      queueName: `${cfg.prefix}-schedules-dlq`,
      retentionPeriod: Duration.days(14),
    });
    Validations.of(this.schedulesDlq).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason:
        'This queue is itself a dead-letter queue: the destination of failed EventBridge Scheduler deliveries and failed asynchronous Lambda runs (cost-alerts, backup). An alarm fires on its first message.',
    });
  }
}
