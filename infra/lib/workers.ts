// The GPU worker fleet: `gpu-worker work` as an ECS service on EC2 GPU instances
// (on-demand/spot mix through one capacity provider), scaled on backlog per task.
import { Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { BatchSettings, emfNamespace, StageConfig } from './config';
import { BUCKET_PREFIXES } from './data';
import { ackArnWildcard, ackWildcard, checkovSkip } from './nag';
import { Queues } from './queues';

/** SIGTERM to SIGKILL: the worker drains in-flight work in this time (spot gives 2 minutes). */
export const WORKER_STOP_TIMEOUT = Duration.seconds(110);
/**
 * What the worker needs after its grace period ends: handing the unfinished messages
 * back (one ChangeMessageVisibility each) and exiting. Grace + this fits in the stop timeout.
 */
export const HAND_BACK_MARGIN = Duration.seconds(20);

/**
 * The partitions the worker reads and writes (`shared/src/batch`): batch records,
 * counters, chunk claims and the tokens enqueued (`BATCH#<t>`), input and output file
 * records (`FILE#<t>`), the month's committed spend a batch gives back (`BUDGET#<t>`).
 * Chunk claims and counts go in one transaction of Put and Update items (authorized
 * per item: TransactWriteItems has no IAM action of its own). DeleteItem: the table
 * adapter clears an expired item that stands in the way of a conditional write
 * (`clear_expired` in `shared/src/store/aws/table.rs`).
 */
export const WORKER_PARTITION_KEYS: readonly string[] = ['BATCH#*', 'FILE#*', 'BUDGET#*'];
export const WORKER_ITEM_ACTIONS: readonly string[] = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
];
/** Read only: tenant records (`TENANTS`) and the model registry (`MODELS`) a batch line is routed by. */
export const WORKER_READ_PARTITION_KEYS: readonly string[] = ['TENANTS', 'MODELS'];
export const WORKER_READ_ACTIONS: readonly string[] = ['dynamodb:GetItem', 'dynamodb:Query'];

/** The worker loop's environment (`WorkerConfig::from_env`, `shared/src/batch/jobs.rs`). */
export function batchEnvironment(b: BatchSettings): Record<string, string> {
  return {
    TENANTAI_BATCH_WORKERS: String(b.workers),
    TENANTAI_BATCH_LINE_CONCURRENCY: String(b.lineConcurrency),
    TENANTAI_BATCH_CHUNK_LINES: String(b.chunkLines),
    TENANTAI_BATCH_CHUNK_TOKENS: String(b.chunkTokens),
    TENANTAI_BATCH_VISIBILITY_SECS: String(b.visibility.toSeconds()),
    TENANTAI_BATCH_GRACE_SECS: String(b.grace.toSeconds()),
    TENANTAI_BATCH_WAIT_SECS: String(b.wait.toSeconds()),
    TENANTAI_BATCH_RETRY_SECS: String(b.retry.toSeconds()),
  };
}
/** The worker's HTTP port (`/health`, `/metrics`). */
export const WORKER_PORT = 8080;

export interface WorkersProps {
  readonly cfg: StageConfig;
  readonly vpc: ec2.IVpc;
  readonly image: ecs.ContainerImage;
  readonly table: dynamodb.ITableV2;
  readonly bucket: s3.IBucket;
  readonly key: kms.IKey;
  readonly queues: Queues;
  readonly alertsTopic: sns.ITopic;
}

export class Workers extends Construct {
  readonly cluster: ecs.Cluster;
  readonly service: ecs.Ec2Service;
  readonly taskRole: iam.Role;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly logGroup: logs.LogGroup;
  /** ERROR lines the workers logged. */
  readonly errors: cloudwatch.Metric;
  /** What the scaling policy acts on. */
  readonly backlogPerTask: cloudwatch.MathExpression;
  readonly runningTasks: cloudwatch.Metric;

  constructor(scope: Construct, id: string, props: WorkersProps) {
    super(scope, id);
    const { cfg, queues, key, bucket } = props;
    const stack = Stack.of(this);

    this.cluster = new ecs.Cluster(this, 'Cluster', {
      clusterName: `${cfg.prefix}-workers`,
      vpc: props.vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });

    const instanceSg = new ec2.SecurityGroup(this, 'InstanceSg', {
      vpc: props.vpc,
      description: 'GPU worker instances: no inbound, outbound to AWS APIs',
      allowAllOutbound: true,
    });
    const instanceRole = new iam.Role(this, 'InstanceRole', {
      roleName: `${cfg.prefix}-worker-instance`,
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
    });
    const launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      launchTemplateName: `${cfg.prefix}-gpu-worker`,
      // The GPU ECS-optimised AMI, resolved at deploy time through its SSM parameter.
      machineImage: ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU),
      userData: ec2.UserData.forLinux(),
      role: instanceRole,
      securityGroup: instanceSg,
      requireImdsv2: true,
      // Containers (awsvpc tasks) cannot reach the instance's metadata service.
      httpPutResponseHopLimit: 1,
      detailedMonitoring: true,
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(100, { encrypted: true, kmsKey: key, volumeType: ec2.EbsDeviceVolumeType.GP3, deleteOnTermination: true }),
        },
      ],
    });
    // On a spot interruption notice the agent drains the instance: tasks get SIGTERM.
    launchTemplate.userData!.addCommands('echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config');
    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'Gpus', {
      autoScalingGroupName: `${cfg.prefix}-gpu-workers`,
      vpc: props.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      minCapacity: 0,
      maxCapacity: cfg.worker.maxInstances,
      capacityRebalance: true,
      mixedInstancesPolicy: {
        launchTemplate,
        launchTemplateOverrides: cfg.worker.instanceTypes.map((t) => ({ instanceType: new ec2.InstanceType(t) })),
        instancesDistribution: {
          onDemandBaseCapacity: 0,
          onDemandPercentageAboveBaseCapacity: cfg.worker.onDemandPercent,
          spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
        },
      },
      notifications: [{ topic: props.alertsTopic }],
    });
    const capacity = new ecs.AsgCapacityProvider(this, 'Capacity', {
      capacityProviderName: `${cfg.prefix}-gpus`,
      autoScalingGroup: this.autoScalingGroup,
      enableManagedScaling: true,
      targetCapacityPercent: 100,
      enableManagedTerminationProtection: true,
      enableManagedDraining: true,
      spotInstanceDraining: true,
    });
    this.cluster.addAsgCapacityProvider(capacity, { spotInstanceDraining: true });

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      logGroupName: `/tenantai/${cfg.prefix}/gpu-worker`,
      retention: cfg.logRetentionDays,
      encryptionKey: key,
      removalPolicy: cfg.prod ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
    });
    const errorsFilter = this.logGroup.addMetricFilter('Errors', {
      filterPattern: logs.FilterPattern.stringValue('$.level', '=', 'ERROR'),
      metricNamespace: emfNamespace(cfg),
      metricName: 'worker_errors',
      metricValue: '1',
      defaultValue: 0,
    });
    this.errors = errorsFilter.metric({ statistic: 'Sum', period: Duration.minutes(5) });

    this.taskRole = new iam.Role(this, 'TaskRole', {
      roleName: `${cfg.prefix}-worker-task`,
      description: 'gpu-worker: the jobs queue, batch files, batch records, model files',
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
    });
    this.grantWork(props);

    // SIGTERM: the worker stops receiving; in-flight work has the grace period, then is
    // handed back (visible at once) before the agent's SIGKILL.
    const batch = cfg.worker.batch;
    if (batch.grace.toSeconds() + HAND_BACK_MARGIN.toSeconds() > WORKER_STOP_TIMEOUT.toSeconds()) {
      throw new Error(`worker.batch.grace (${batch.grace.toSeconds()} s) leaves under ${HAND_BACK_MARGIN.toSeconds()} s of the ${WORKER_STOP_TIMEOUT.toSeconds()} s stop timeout to hand work back`);
    }
    const taskDef = new ecs.Ec2TaskDefinition(this, 'Task', {
      family: `${cfg.prefix}-gpu-worker`,
      networkMode: ecs.NetworkMode.AWS_VPC,
      taskRole: this.taskRole,
    });
    taskDef.addVolume({ name: 'model-cache' });
    taskDef.addVolume({ name: 'tmp' });
    const container = taskDef.addContainer('worker', {
      image: props.image,
      command: ['work'],
      gpuCount: 1,
      cpu: 3584,
      // g4dn/g5/g6 .xlarge have 16 GiB; the agent and the OS keep the rest.
      memoryReservationMiB: 12 * 1024,
      user: '10001',
      readonlyRootFilesystem: true,
      privileged: false,
      stopTimeout: WORKER_STOP_TIMEOUT,
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: 'worker', mode: ecs.AwsLogDriverMode.NON_BLOCKING }),
      environment: {
        TENANTAI_RESOURCE_PREFIX: cfg.prefix,
        TENANTAI_TABLE: props.table.tableName,
        TENANTAI_BUCKET: bucket.bucketName,
        TENANTAI_JOBS_QUEUE: queues.jobs.queueName,
        TENANTAI_MODEL: `s3://${bucket.bucketName}/${cfg.workerModelPrefix}`,
        TENANTAI_MODEL_ID: cfg.workerModelId,
        TENANTAI_MODEL_CACHE_DIR: '/var/lib/tenantai/model-cache',
        TENANTAI_DEVICE: 'cuda:0',
        TENANTAI_LOG_FORMAT: 'json',
        ...batchEnvironment(batch),
        AWS_REGION: stack.region,
      },
      healthCheck: {
        command: ['CMD', 'curl', '-fsS', `http://127.0.0.1:${WORKER_PORT}/health`],
        interval: Duration.seconds(30),
        timeout: Duration.seconds(5),
        retries: 3,
        // Model download and load.
        startPeriod: Duration.seconds(180),
      },
    });
    container.addMountPoints(
      { containerPath: '/var/lib/tenantai', sourceVolume: 'model-cache', readOnly: false },
      { containerPath: '/tmp', sourceVolume: 'tmp', readOnly: false },
    );

    const taskSg = new ec2.SecurityGroup(this, 'TaskSg', {
      vpc: props.vpc,
      description: 'gpu-worker tasks: no inbound (they poll SQS), outbound to AWS APIs',
      allowAllOutbound: true,
    });
    this.service = new ecs.Ec2Service(this, 'Service', {
      serviceName: `${cfg.prefix}-gpu-worker`,
      cluster: this.cluster,
      taskDefinition: taskDef,
      capacityProviderStrategies: [{ capacityProvider: capacity.capacityProviderName, weight: 1 }],
      securityGroups: [taskSg],
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      circuitBreaker: { rollback: true },
      minHealthyPercent: 0,
      maxHealthyPercent: 200,
      propagateTags: ecs.PropagatedTagSource.SERVICE,
      enableECSManagedTags: true,
    });

    // Backlog per task: messages waiting or in flight over running tasks. With no task
    // running, any outstanding message reads as exactly one task's worth, so the
    // service scales out from zero by one step.
    const queueMetric = (metricName: string) =>
      new cloudwatch.Metric({
        namespace: 'AWS/SQS',
        metricName,
        dimensionsMap: { QueueName: queues.jobs.queueName },
        statistic: 'Maximum',
        period: Duration.minutes(1),
      });
    this.runningTasks = new cloudwatch.Metric({
      namespace: 'ECS/ContainerInsights',
      metricName: 'RunningTaskCount',
      dimensionsMap: { ClusterName: this.cluster.clusterName, ServiceName: this.service.serviceName },
      statistic: 'Average',
      period: Duration.minutes(1),
    });
    const target = cfg.worker.backlogPerTask;
    this.backlogPerTask = new cloudwatch.MathExpression({
      label: 'Work items outstanding per running task',
      expression: `IF(FILL(tasks, 0) > 0, (visible + inflight) / FILL(tasks, 0), IF((visible + inflight) > 0, ${target}, 0))`,
      usingMetrics: {
        visible: queueMetric('ApproximateNumberOfMessagesVisible'),
        inflight: queueMetric('ApproximateNumberOfMessagesNotVisible'),
        tasks: this.runningTasks,
      },
      period: Duration.minutes(1),
    });
    const scaling = this.service.autoScaleTaskCount({ minCapacity: 0, maxCapacity: cfg.worker.maxTasks });
    scaling.scaleOnMetric('BacklogPerTask', {
      metric: this.backlogPerTask,
      adjustmentType: autoscaling.AdjustmentType.CHANGE_IN_CAPACITY,
      scalingSteps: [
        // Nothing left for the tasks there are: give one back (it drains on SIGTERM).
        { upper: 0.5, change: -1 },
        { lower: target, upper: 3 * target, change: +1 },
        { lower: 3 * target, change: +3 },
      ],
      cooldown: Duration.minutes(3),
      evaluationPeriods: 3,
      datapointsToAlarm: 2,
    });

    const taskPolicy = this.taskRole.node.findChild('DefaultPolicy');
    for (const prefix of [BUCKET_PREFIXES.models, BUCKET_PREFIXES.files, BUCKET_PREFIXES.batches]) {
      ackArnWildcard(taskPolicy, props.bucket, `/${prefix}*`,
        `Objects under ${prefix}: model files (read), batch input files (read), chunk results and output files (read, write) of any tenant's batch, which the fleet serves.`);
    }
    ackWildcard(taskDef.obtainExecutionRole().node.findChild('DefaultPolicy'), 'Resource::*',
      'ecr:GetAuthorizationToken has no resource-level permission; the image pull itself is limited to the image repository.');
    const instancePolicy = instanceRole.node.findChild('DefaultPolicy');
    ackWildcard(instancePolicy, 'Resource::*',
      'The ECS agent (ecs:DiscoverPollEndpoint, ecr:GetAuthorizationToken and the like) needs actions that support no resource-level permission; the CDK scopes the rest to the cluster.');
    checkovSkip(instancePolicy, 'CKV_AWS_111',
      'The ECS container-instance policy the CDK writes for the agent: registration and state reports, scoped to this cluster where the actions allow a resource.');
    ackWildcard(instancePolicy, 'Action::ecs:Submit*',
      'The ECS agent reports task and container state with the ecs:Submit* actions, on this cluster only.');
    Validations.of(this.autoScalingGroup).acknowledge({
      id: 'AwsSolutions-EC26',
      reason: 'The root volume is encrypted with the stage key in the launch template (mixed-instances ASGs have no launch configuration for the rule to read); a test asserts it.',
    });
    Validations.of(this).acknowledge({
      id: 'AwsSolutions-ECS2',
      reason:
        'The worker environment holds resource names, the model location, the device and the batch loop settings only; it has no secret (AWS credentials come from the task role).',
    });
  }

  private grantWork(props: WorkersProps): void {
    const { queues, key, bucket } = props;
    const stack = Stack.of(this);
    const role = this.taskRole;
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'WorkTheJobsQueueAndItsDlq',
        actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueUrl'],
        resources: [queues.jobs.queueArn, queues.jobsDlq.queueArn],
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'EnqueueChunkJobs',
        actions: ['sqs:SendMessage'],
        resources: [queues.jobs.queueArn],
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'MeterBatchLines',
        actions: ['sqs:SendMessage', 'sqs:GetQueueUrl'],
        resources: [queues.usage.queueArn],
      }),
    );
    const leadingKeys = (keys: readonly string[]) => ({
      'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': [...keys] },
      // ForAllValues holds vacuously for a request without keys: require them.
      Null: { 'dynamodb:LeadingKeys': 'false' },
    });
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'BatchesFilesAndBudgets',
        actions: [...WORKER_ITEM_ACTIONS],
        resources: [props.table.tableArn],
        conditions: leadingKeys(WORKER_PARTITION_KEYS),
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadTenantsAndModels',
        actions: [...WORKER_READ_ACTIONS],
        resources: [props.table.tableArn],
        conditions: leadingKeys(WORKER_READ_PARTITION_KEYS),
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadModelsBatchInputsAndChunkResults',
        actions: ['s3:GetObject'],
        resources: [BUCKET_PREFIXES.models, BUCKET_PREFIXES.files, BUCKET_PREFIXES.batches].map((p) => bucket.arnForObjects(`${p}*`)),
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'WriteChunkResultsAndOutputFiles',
        actions: ['s3:PutObject', 's3:AbortMultipartUpload'],
        resources: [BUCKET_PREFIXES.files, BUCKET_PREFIXES.batches].map((p) => bucket.arnForObjects(`${p}*`)),
      }),
    );
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyViaTheseServices',
        actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [key.keyArn],
        conditions: {
          StringEquals: { 'kms:ViaService': ['sqs', 's3', 'dynamodb'].map((s) => `${s}.${stack.region}.amazonaws.com`) },
        },
      }),
    );
  }
}
