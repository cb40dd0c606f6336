// The tenant API (REST API: the only API Gateway flavour that streams Lambda answers)
// behind the Lambda REQUEST authorizer, and the admin API behind IAM auth.
import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { StageConfig } from './config';
import { checkovSkip } from './nag';

/** The tenant API's routes: path -> methods. All go to the api function. */
export const TENANT_ROUTES: Readonly<Record<string, readonly string[]>> = {
  '/v1/embeddings': ['POST'],
  '/v1/chat/completions': ['POST'],
  '/v1/models': ['GET'],
  '/v1/models/{id}': ['GET'],
  '/v1/usage': ['GET'],
  '/v1/usage/chart': ['GET'],
  '/v1/files': ['GET', 'POST'],
  '/v1/files/{id}': ['GET', 'DELETE'],
  '/v1/files/{id}/content': ['GET'],
  '/v1/batches': ['GET', 'POST'],
  '/v1/batches/{id}': ['GET'],
  '/v1/batches/{id}/cancel': ['POST'],
};
/** Unauthenticated, for probes. */
export const HEALTH_ROUTE = '/health';
/** Unauthenticated: the tenant API's OpenAPI document (it describes the API, holds no data). */
export const OPENAPI_ROUTE = '/openapi.json';
/** The routes without credentials, each answering a constant. */
export const OPEN_ROUTES: Readonly<Record<string, string>> = {
  [HEALTH_ROUTE]: 'GET /health is the unauthenticated liveness probe; it answers a constant and reads no tenant data.',
  [OPENAPI_ROUTE]: 'GET /openapi.json is the API description, open like any published API reference; it answers a constant built into the function and reads no tenant data.',
};
/** Chat answers may stream this long (REST API streaming allows up to 15 minutes). */
export const CHAT_TIMEOUT = Duration.minutes(5);

export interface ApiProps {
  readonly cfg: StageConfig;
  readonly key: kms.IKey;
  readonly apiFn: lambda.IFunction;
  readonly adminFn: lambda.IFunction;
  readonly authorizerFn: lambda.IFunction;
}

/** An OpenAI-shaped error body for a gateway response. */
function openAiError(type: string, code: string, message = '$context.error.messageString'): Record<string, string> {
  return {
    'application/json': `{"error":{"message":${message},"type":"${type}","param":null,"code":"${code}"}}`,
  };
}

export class Api extends Construct {
  readonly tenantApi: apigw.RestApi;
  readonly adminApi: apigw.RestApi;
  readonly authorizer: apigw.RequestAuthorizer;

  constructor(scope: Construct, id: string, props: ApiProps) {
    super(scope, id);
    const { cfg } = props;
    const accessLogs = (name: string) =>
      new logs.LogGroup(this, `${name}AccessLogs`, {
        logGroupName: `/tenantai/${cfg.prefix}/${name}-access`,
        retention: cfg.logRetentionDays,
        encryptionKey: props.key,
        removalPolicy: cfg.prod ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
      });
    const accessLogFormat = apigw.AccessLogFormat.custom(
      JSON.stringify({
        requestId: '$context.requestId',
        ip: '$context.identity.sourceIp',
        caller: '$context.identity.caller',
        user: '$context.identity.userArn',
        requestTime: '$context.requestTimeEpoch',
        method: '$context.httpMethod',
        resource: '$context.resourcePath',
        status: '$context.status',
        protocol: '$context.protocol',
        responseLength: '$context.responseLength',
        latencyMs: '$context.responseLatency',
        integrationLatencyMs: '$context.integrationLatency',
        integrationStatus: '$context.integrationStatus',
        tenantId: '$context.authorizer.tenant_id',
        keyId: '$context.authorizer.key_id',
        error: '$context.error.message',
      }),
    );

    this.tenantApi = new apigw.RestApi(this, 'TenantApi', {
      restApiName: `${cfg.prefix}-api`,
      description: `tenantai ${cfg.stage}: the OpenAI-compatible tenant API`,
      endpointConfiguration: { types: [apigw.EndpointType.REGIONAL] },
      // The account-level role API Gateway writes execution logs with (one per account
      // and region; see infra/README.md when two stages share an account).
      cloudWatchRole: true,
      cloudWatchRoleRemovalPolicy: RemovalPolicy.RETAIN,
      binaryMediaTypes: ['multipart/form-data', 'application/octet-stream'],
      deployOptions: {
        stageName: cfg.stage,
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs('api')),
        accessLogFormat,
        loggingLevel: apigw.MethodLoggingLevel.ERROR,
        dataTraceEnabled: false,
        metricsEnabled: true,
        tracingEnabled: true,
        throttlingRateLimit: cfg.apiRateLimit,
        throttlingBurstLimit: cfg.apiBurstLimit,
      },
    });

    this.authorizer = new apigw.RequestAuthorizer(this, 'KeyAuthorizer', {
      authorizerName: `${cfg.prefix}-keys`,
      handler: props.authorizerFn,
      identitySources: [apigw.IdentitySource.header('Authorization')],
      // Matches TENANTAI_AUTH_CACHE_SECS: a revoked key stops within 30 s.
      resultsCacheTtl: Duration.seconds(30),
    });

    // One function answers every route, so every route uses its one response mode:
    // streamed (the api runs under lambda_http's streaming runtime).
    const integration = (timeout: Duration) =>
      new apigw.LambdaIntegration(props.apiFn, {
        proxy: true,
        responseTransferMode: apigw.ResponseTransferMode.STREAM,
        timeout,
        // One invoke permission for the API rather than two per method.
        scopePermissionToMethod: false,
      });
    const buffered = integration(Duration.seconds(29));
    const chat = integration(CHAT_TIMEOUT);
    for (const [path, methods] of Object.entries(TENANT_ROUTES)) {
      const resource = this.tenantApi.root.resourceForPath(path);
      for (const method of methods) {
        const m = resource.addMethod(method, path === '/v1/chat/completions' ? chat : buffered, {
          authorizer: this.authorizer,
          authorizationType: apigw.AuthorizationType.CUSTOM,
        });
        Validations.of(m).acknowledge({
          id: 'AwsSolutions-COG4',
          reason: 'Tenants authenticate with tenantai API keys (or JWTs), checked by the Lambda REQUEST authorizer, not with a Cognito user pool.',
        });
      }
    }
    for (const [route, reason] of Object.entries(OPEN_ROUTES)) {
      const open = this.tenantApi.root
        .resourceForPath(route)
        .addMethod('GET', buffered, { authorizationType: apigw.AuthorizationType.NONE });
      checkovSkip(open, 'CKV_AWS_59', reason);
      for (const id of ['AwsSolutions-APIG4', 'AwsSolutions-COG4']) {
        Validations.of(open).acknowledge({ id, reason });
      }
    }

    // Errors API Gateway answers itself, in OpenAI's shape (the SDKs parse it).
    const responses: [string, apigw.ResponseType, string, string][] = [
      ['Unauthorized', apigw.ResponseType.UNAUTHORIZED, 'invalid_request_error', 'invalid_api_key'],
      ['AccessDenied', apigw.ResponseType.ACCESS_DENIED, 'invalid_request_error', 'invalid_api_key'],
      ['Throttled', apigw.ResponseType.THROTTLED, 'rate_limit_exceeded', 'rate_limit_exceeded'],
      ['Default4xx', apigw.ResponseType.DEFAULT_4XX, 'invalid_request_error', 'bad_request'],
      ['Default5xx', apigw.ResponseType.DEFAULT_5XX, 'server_error', 'gateway_error'],
    ];
    for (const [id, type, errType, code] of responses) {
      this.tenantApi.addGatewayResponse(id, { type, templates: openAiError(errType, code) });
    }

    // Admin API: IAM (SigV4) first, then the admin bearer token inside the function.
    this.adminApi = new apigw.RestApi(this, 'AdminApi', {
      restApiName: `${cfg.prefix}-admin`,
      description: `tenantai ${cfg.stage}: the admin API (IAM auth)`,
      endpointConfiguration: { types: [apigw.EndpointType.REGIONAL] },
      cloudWatchRole: false,
      deployOptions: {
        stageName: cfg.stage,
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs('admin')),
        accessLogFormat,
        loggingLevel: apigw.MethodLoggingLevel.ERROR,
        dataTraceEnabled: false,
        metricsEnabled: true,
        tracingEnabled: true,
        throttlingRateLimit: 20,
        throttlingBurstLimit: 40,
      },
      defaultMethodOptions: { authorizationType: apigw.AuthorizationType.IAM },
    });
    Validations.of(this.tenantApi.node.findChild('CloudWatchRole')).acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
      reason: "API Gateway's account-level logging role: AWS's managed policy for it is the documented way and grants only log delivery.",
    });
    const account = this.tenantApi.node.tryFindChild('CloudWatchAccount');
    if (account) this.adminApi.deploymentStage.node.addDependency(account);
    this.adminApi.root
      .addResource('admin')
      .addProxy({
        anyMethod: true,
        defaultIntegration: new apigw.LambdaIntegration(props.adminFn, { proxy: true, scopePermissionToMethod: false }),
        defaultMethodOptions: { authorizationType: apigw.AuthorizationType.IAM },
      });

    for (const api of [this.tenantApi, this.adminApi]) {
      checkovSkip(api.deploymentStage, 'CKV_AWS_120',
        'No gateway cache: answers are per tenant and per key (a cache keyed on the path would mix them), and the api keeps its own scope-keyed embeddings cache; a cache cluster also bills by the hour.');
      Validations.of(api).acknowledge({
        id: 'AwsSolutions-APIG2',
        reason:
          'Bodies are validated by the functions, which answer OpenAI-shaped 400s naming the bad parameter; a gateway model would duplicate that schema and answer in another shape.',
      });
      Validations.of(api).acknowledge({
        id: 'AwsSolutions-APIG3',
        reason:
          'No WAF web ACL by default (about $6/month per stage before requests); the tenant API is throttled per stage and every route but /health and /openapi.json needs a key. infra/README.md shows how to attach one.',
      });
    }
    for (const m of this.adminApi.methods) {
      Validations.of(m).acknowledge({
        id: 'AwsSolutions-COG4',
        reason: 'The admin API uses IAM (SigV4) authorization, as the design requires; operators sign with their AWS credentials.',
      });
    }
  }
}
