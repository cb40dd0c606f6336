// The VPC the GPU workers (and the optional SageMaker endpoint) run in: private
// subnets with NAT egress, free gateway endpoints for S3 and DynamoDB, flow logs.
import { RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { StageConfig } from './config';

export class Network extends Construct {
  readonly vpc: ec2.Vpc;

  constructor(scope: Construct, id: string, cfg: StageConfig, key: kms.IKey) {
    super(scope, id);
    this.vpc = new ec2.Vpc(this, 'Vpc', {
      vpcName: cfg.prefix,
      ipAddresses: ec2.IpAddresses.cidr('10.40.0.0/16'),
      maxAzs: 2,
      natGateways: cfg.natGateways,
      // No resource uses the default security group; restricting it takes a custom
      // resource (a Node.js Lambda) that this stack does not otherwise need.
      restrictDefaultSecurityGroup: false,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24, mapPublicIpOnLaunch: false },
        { name: 'private', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 },
      ],
      gatewayEndpoints: {
        S3: { service: ec2.GatewayVpcEndpointAwsService.S3 },
        DynamoDB: { service: ec2.GatewayVpcEndpointAwsService.DYNAMODB },
      },
    });
    const flowLogs = new logs.LogGroup(this, 'FlowLogs', {
      logGroupName: `/tenantai/${cfg.prefix}/vpc-flow-logs`,
      retention: cfg.prod ? 90 : 14,
      encryptionKey: key,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.vpc.addFlowLog('FlowLog', {
      destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogs),
      trafficType: ec2.FlowLogTrafficType.REJECT,
    });
  }
}
