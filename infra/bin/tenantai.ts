#!/usr/bin/env node
// The CDK app: `cdk synth|deploy -c stage=dev|prod`.
//
// Context:
//   stage             dev (default) or prod
//   lambdaDir         the `cargo lambda build --release --arm64` output (default ../target/lambda),
//                     one directory per function holding its `bootstrap`
//   workerImageDir    the worker image's build context (default ../target/worker-image),
//                     staged by scripts/deploy.sh
//   account, region   where to deploy (default: the CLI's environment)
//   availabilityZones the VPC's two zones, comma-separated (skips the lookup)
//   sagemaker=true    also deploy a SageMaker endpoint for the worker model
//   tenantCredentials=true  the api's own role keeps platform items only
//   reserveConcurrency=false  reserve no Lambda concurrency (accounts with a low quota)
//   jwksUrl, jwtIssuer, jwtAudience, alarmEmail, workerModelId, workerModelPrefix
import * as path from 'path';
import { App, Validations } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { AwsSolutionsChecks } from 'cdk-nag';
import { recommendedFlags, stageConfig } from '../lib/config';
import { TenantaiStack } from '../lib/tenantai-stack';

const app = new App({ context: recommendedFlags() });
const ctx = (k: string) => app.node.tryGetContext(k);
const cfg = stageConfig(ctx);
const here = path.resolve(__dirname, '..');
const lambdaDir = path.resolve(here, (ctx('lambdaDir') as string) ?? '../target/lambda');
const workerImageDir = path.resolve(here, (ctx('workerImageDir') as string) ?? '../target/worker-image');

const account = (ctx('account') as string) ?? process.env.CDK_DEFAULT_ACCOUNT;
const region = (ctx('region') as string) ?? process.env.CDK_DEFAULT_REGION;
// `-c availabilityZones=eu-west-1a,eu-west-1b` answers the VPC's zone lookup without
// AWS credentials (CI synthesizes offline); otherwise the CLI looks them up and caches
// them in cdk.context.json.
const azs = ctx('availabilityZones') as string | undefined;
if (azs && account && region) {
  app.node.setContext(`availability-zones:account=${account}:region=${region}`, azs.split(','));
}

new TenantaiStack(app, `tenantai-${cfg.stage}`, {
  cfg,
  code: (name) => lambda.Code.fromAsset(path.join(lambdaDir, name)),
  workerImageDir,
  tenantCredentials: ctx('tenantCredentials') === 'true' || ctx('tenantCredentials') === true,
  env: { account, region },
  description: `tenantai ${cfg.stage}: multi-tenant AI backend (API, functions, queues, GPU workers)`,
  terminationProtection: cfg.prod,
});

Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
