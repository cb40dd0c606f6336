// One stage of tenantai: every resource of the design, composed from one construct
// per concern.
import { CfnOutput, Stack, StackProps, Tags } from 'aws-cdk-lib';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { Construct } from 'constructs';
import { Api } from './api';
import { StageConfig } from './config';
import { Data } from './data';
import { FunctionCode, Functions } from './functions';
import { Network } from './network';
import { Observability } from './observability';
import { Queues } from './queues';
import { ModelEndpoint } from './sagemaker';
import { Schedules } from './schedules';
import { Workers } from './workers';

export interface TenantaiStackProps extends StackProps {
  readonly cfg: StageConfig;
  /** Each function's built code (`target/lambda/<name>/`). */
  readonly code: FunctionCode;
  /** The worker image's build context: its Dockerfile and the staged `gpu-worker` binary. */
  readonly workerImageDir: string;
  /** The api uses tenant-scoped credentials for tenant items (see Functions). */
  readonly tenantCredentials?: boolean;
}

export class TenantaiStack extends Stack {
  readonly data: Data;
  readonly queues: Queues;
  readonly functions: Functions;
  readonly api: Api;
  readonly schedules: Schedules;
  readonly workers: Workers;
  readonly endpoint?: ModelEndpoint;
  readonly observability: Observability;

  constructor(scope: Construct, id: string, props: TenantaiStackProps) {
    super(scope, id, props);
    const { cfg } = props;
    Tags.of(this).add('project', 'tenantai');
    Tags.of(this).add('stage', cfg.stage);

    this.data = new Data(this, 'Data', cfg);
    const { key, table, bucket, alertsTopic } = this.data;
    this.queues = new Queues(this, 'Queues', { cfg, key, meteringTimeout: cfg.functions.metering.timeout });
    this.functions = new Functions(this, 'Functions', {
      cfg,
      code: props.code,
      table,
      bucket,
      key,
      queues: this.queues,
      alertsTopic,
      tenantCredentials: props.tenantCredentials ?? false,
    });
    const fns = this.functions.fns;
    this.api = new Api(this, 'Api', { cfg, key, apiFn: fns.api, adminFn: fns.admin, authorizerFn: fns.authorizer });
    this.schedules = new Schedules(this, 'Schedules', {
      cfg,
      key,
      costAlerts: fns['cost-alerts'],
      backup: fns.backup,
      dlq: this.queues.schedulesDlq,
    });

    const network = new Network(this, 'Network', cfg, key);
    const image = new ecrAssets.DockerImageAsset(this, 'WorkerImage', {
      directory: props.workerImageDir,
      platform: ecrAssets.Platform.LINUX_AMD64,
    });
    this.workers = new Workers(this, 'Workers', {
      cfg,
      vpc: network.vpc,
      image: ecs.ContainerImage.fromDockerImageAsset(image),
      table,
      bucket,
      key,
      queues: this.queues,
      alertsTopic,
    });
    if (cfg.sagemaker) {
      this.endpoint = new ModelEndpoint(this, 'ModelEndpoint', {
        cfg,
        settings: cfg.sagemaker,
        imageUri: image.imageUri,
        repository: image.repository,
        bucket,
        key,
        vpc: network.vpc,
      });
    }
    this.observability = new Observability(this, 'Observability', {
      cfg,
      topic: alertsTopic,
      queues: this.queues,
      tenantApi: this.api.tenantApi,
      adminApi: this.api.adminApi,
      fns,
      workers: this.workers,
    });

    new CfnOutput(this, 'TenantApiUrl', { value: `${this.api.tenantApi.url}v1`, description: 'OpenAI base_url for tenants' });
    new CfnOutput(this, 'AdminApiUrl', { value: this.api.adminApi.url, description: 'Admin API (SigV4, then the admin token)' });
    new CfnOutput(this, 'TableName', { value: table.tableName });
    new CfnOutput(this, 'BucketName', { value: bucket.bucketName });
    new CfnOutput(this, 'AlertsTopicArn', { value: alertsTopic.topicArn });
    new CfnOutput(this, 'TenantRoleArn', { value: this.functions.tenantIsolation.role.roleArn });
    if (this.endpoint) new CfnOutput(this, 'SageMakerEndpoint', { value: this.endpoint.endpoint.endpointName! });
  }
}
