// The optional SageMaker real-time endpoint (`-c sagemaker=true`): the worker image
// serving one model version over the SageMaker container contract (`<image> serve`,
// /ping and /invocations on 8080), the model files mounted at /opt/ml/model.
import { Stack, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sagemaker from 'aws-cdk-lib/aws-sagemaker';
import { Construct } from 'constructs';
import { StageConfig } from './config';
import { ackArnWildcard, ackWildcard, checkovSkip } from './nag';

export interface EndpointProps {
  readonly cfg: StageConfig;
  readonly settings: NonNullable<StageConfig['sagemaker']>;
  readonly imageUri: string;
  readonly repository: ecr.IRepository;
  readonly bucket: s3.IBucket;
  readonly key: kms.IKey;
  readonly vpc: ec2.IVpc;
}

/** The endpoint name the registry's `sagemaker` backend names: `<prefix>-<model id>`. */
export function endpointName(prefix: string, modelId: string): string {
  const name = `${prefix}-${modelId}`.replace(/[^a-zA-Z0-9-]/g, '-').replace(/-+/g, '-');
  return name.slice(0, 63).replace(/-$/, '');
}

export class ModelEndpoint extends Construct {
  readonly endpoint: sagemaker.CfnEndpoint;
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: EndpointProps) {
    super(scope, id);
    const { cfg, settings, bucket, key } = props;
    const stack = Stack.of(this);
    const name = endpointName(cfg.prefix, settings.modelId);
    const modelPrefix = settings.modelPrefix.replace(/\/?$/, '/');

    this.role = new iam.Role(this, 'Role', {
      roleName: `${cfg.prefix}-sagemaker`,
      assumedBy: new iam.ServicePrincipal('sagemaker.amazonaws.com'),
    });
    props.repository.grantPull(this.role);
    this.role.addToPolicy(
      new iam.PolicyStatement({ sid: 'ModelFiles', actions: ['s3:GetObject'], resources: [bucket.arnForObjects(`${modelPrefix}*`)] }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ListModelFiles',
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${modelPrefix}*`] } },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyViaS3',
        actions: ['kms:Decrypt'],
        resources: [key.keyArn],
        conditions: { StringEquals: { 'kms:ViaService': `s3.${stack.region}.amazonaws.com` } },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'EndpointLogs',
        actions: ['logs:CreateLogGroup', 'logs:CreateLogStream', 'logs:PutLogEvents', 'logs:DescribeLogStreams'],
        resources: [`arn:${stack.partition}:logs:${stack.region}:${stack.account}:log-group:/aws/sagemaker/Endpoints/${name}:*`],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'EndpointMetrics',
        actions: ['cloudwatch:PutMetricData'],
        resources: ['*'],
        conditions: { StringLike: { 'cloudwatch:namespace': '/aws/sagemaker/*' } },
      }),
    );
    // SageMaker attaches the model's network interfaces in the VPC.
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'VpcInterfaces',
        actions: [
          'ec2:CreateNetworkInterface',
          'ec2:CreateNetworkInterfacePermission',
          'ec2:DeleteNetworkInterface',
          'ec2:DeleteNetworkInterfacePermission',
          'ec2:DescribeNetworkInterfaces',
          'ec2:DescribeVpcs',
          'ec2:DescribeDhcpOptions',
          'ec2:DescribeSubnets',
          'ec2:DescribeSecurityGroups',
        ],
        resources: ['*'],
      }),
    );
    {
      ackWildcard(this.role, 'Resource::*',
          'ecr:GetAuthorizationToken, cloudwatch:PutMetricData (limited to the /aws/sagemaker/* namespace by condition) and the EC2 network-interface actions SageMaker needs for a VPC model support no resource-level permissions.');
    }
    ackArnWildcard(this.role, bucket, `/${modelPrefix}*`, 'The model version directory: every file under its prefix, nothing else in the bucket.');
    ackWildcard(this.role, `Resource::arn:${stack.partition}:logs:${stack.region}:${stack.account}:log-group:/aws/sagemaker/Endpoints/${name}:*`,
      "The endpoint's own log group and its streams.");

    const policy = this.role.node.findChild('DefaultPolicy');
    for (const id of ['CKV_AWS_111', 'CKV_AWS_109']) {
      checkovSkip(policy, id,
        "The EC2 network-interface actions (create, delete, permission) that SageMaker needs to attach a VPC model support no resource scoping; only SageMaker can assume this role.");
    }
    const sg = new ec2.SecurityGroup(this, 'Sg', {
      vpc: props.vpc,
      description: 'SageMaker model containers: no inbound from the VPC',
      allowAllOutbound: true,
    });
    const model = new sagemaker.CfnModel(this, 'Model', {
      modelName: name,
      executionRoleArn: this.role.roleArn,
      // The container reaches nothing: SageMaker downloads the model files for it.
      enableNetworkIsolation: true,
      vpcConfig: {
        subnets: props.vpc.selectSubnets({ subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS }).subnetIds,
        securityGroupIds: [sg.securityGroupId],
      },
      primaryContainer: {
        image: props.imageUri,
        modelDataSource: {
          s3DataSource: { s3Uri: bucket.s3UrlForObject(modelPrefix), s3DataType: 'S3Prefix', compressionType: 'None' },
        },
        environment: {
          TENANTAI_MODEL: '/opt/ml/model',
          TENANTAI_MODEL_ID: settings.modelId,
          TENANTAI_MODEL_CACHE_DIR: '/tmp/model-cache',
          TENANTAI_DEVICE: 'cuda:0',
          TENANTAI_LOG_FORMAT: 'json',
        },
      },
    });
    model.node.addDependency(this.role);
    const config = new sagemaker.CfnEndpointConfig(this, 'Config', {
      productionVariants: [
        {
          variantName: 'live',
          modelName: model.attrModelName,
          instanceType: settings.instanceType,
          initialInstanceCount: settings.instanceCount,
          initialVariantWeight: 1,
        },
      ],
    });
    Validations.of(config).acknowledge({
      id: 'AwsSolutions-SM2',
      reason:
        'GPU instance types with local NVMe storage (ml.g5, ml.g6, ml.g4dn) refuse a KmsKeyId for the ML storage volume; their instance store is encrypted by the hardware.',
    });
    this.endpoint = new sagemaker.CfnEndpoint(this, 'Endpoint', {
      endpointName: name,
      endpointConfigName: config.attrEndpointConfigName,
    });
  }
}
