import * as fs from 'fs';
import * as path from 'path';
import { CHAT_TIMEOUT, HEALTH_ROUTE, OPENAPI_ROUTE, OPEN_ROUTES, TENANT_ROUTES } from '../lib/api';
import { resources, template } from './helpers';

const t = template('dev');
const apis = resources(t, 'AWS::ApiGateway::RestApi');
const [tenantApiId] = apis.find(([, a]) => a.Properties.Name === 'tenantai-dev-api')!;
const [adminApiId] = apis.find(([, a]) => a.Properties.Name === 'tenantai-dev-admin')!;
const fnId = (name: string) => resources(t, 'AWS::Lambda::Function').find(([, f]) => f.Properties.FunctionName === `tenantai-dev-${name}`)![0];

// Rebuild each method's full path from the Resource tree.
const resTable = Object.fromEntries(resources(t, 'AWS::ApiGateway::Resource'));
function pathOf(resourceId: any): string {
  if (resourceId['Fn::GetAtt']) return '';
  const r = resTable[resourceId.Ref];
  return `${pathOf(r.Properties.ParentId)}/${r.Properties.PathPart}`;
}
const methods = resources(t, 'AWS::ApiGateway::Method').map(([, m]) => ({
  api: m.Properties.RestApiId.Ref,
  path: pathOf(m.Properties.ResourceId),
  method: m.Properties.HttpMethod,
  props: m.Properties,
}));
const tenantMethods = methods.filter((m) => m.api === tenantApiId);

test('the tenant API is a REST API (v1: it can stream), regional; no HTTP API exists', () => {
  t.resourceCountIs('AWS::ApiGatewayV2::Api', 0);
  expect(apis).toHaveLength(2);
  expect(apis.find(([id]) => id === tenantApiId)![1].Properties.EndpointConfiguration.Types).toEqual(['REGIONAL']);
});

test('every route exists, behind the REQUEST authorizer, and goes to the api function', () => {
  const [[authId, auth]] = resources(t, 'AWS::ApiGateway::Authorizer');
  expect(auth.Properties).toMatchObject({
    Type: 'REQUEST',
    IdentitySource: 'method.request.header.Authorization',
    AuthorizerResultTtlInSeconds: 30,
  });
  expect(JSON.stringify(auth.Properties.AuthorizerUri)).toContain(fnId('authorizer'));
  const expected = Object.entries(TENANT_ROUTES).flatMap(([p, ms]) => ms.map((m) => `${m} ${p}`));
  const keyed = tenantMethods.filter((m) => !(m.path in OPEN_ROUTES));
  expect(keyed.map((m) => `${m.method} ${m.path}`).sort()).toEqual(expected.sort());
  for (const m of keyed) {
    expect(m.props.AuthorizationType).toBe('CUSTOM');
    expect(m.props.AuthorizerId).toEqual({ Ref: authId });
    expect(m.props.Integration.Type).toBe('AWS_PROXY');
    expect(JSON.stringify(m.props.Integration.Uri)).toContain(fnId('api'));
  }
});

test('the routes are the api router’s (shared/src/http/api.rs): Files and Batch APIs included', () => {
  const src = fs.readFileSync(path.join(__dirname, '..', '..', 'shared', 'src', 'http', 'api.rs'), 'utf8');
  const body = src.slice(src.indexOf('pub fn router('), src.indexOf('.layer(middleware::from_fn_with_state'));
  const rust: string[] = [];
  for (const part of body.split('.route(').slice(1)) {
    const p = part.match(/^\s*"([^"]+)"/)![1];
    for (const m of part.matchAll(/(?:^|[\s(.])(get|post|put|patch|delete)\(/g)) rust.push(`${m[1].toUpperCase()} ${p}`);
  }
  const infra = Object.entries(TENANT_ROUTES).flatMap(([p, ms]) => ms.map((m) => `${m} ${p}`));
  expect(infra.sort()).toEqual(rust.sort());
  for (const r of ['POST /v1/files', 'GET /v1/files/{id}/content', 'DELETE /v1/files/{id}', 'POST /v1/batches/{id}/cancel']) expect(infra).toContain(r);
});

test('chat completions streams (InvokeWithResponseStream) with a long timeout', () => {
  const chat = tenantMethods.find((m) => m.path === '/v1/chat/completions' && m.method === 'POST')!;
  expect(chat.props.Integration.ResponseTransferMode).toBe('STREAM');
  expect(JSON.stringify(chat.props.Integration.Uri)).toContain('/2021-11-15/functions/');
  expect(JSON.stringify(chat.props.Integration.Uri)).toContain('/response-streaming-invocations');
  expect(chat.props.Integration.TimeoutInMillis).toBe(CHAT_TIMEOUT.toMilliseconds());
});

test('the api function has one response mode: every route on it streams', () => {
  for (const m of tenantMethods) expect(m.props.Integration.ResponseTransferMode).toBe('STREAM');
});

test('/health and /openapi.json alone are open, and go to the api function', () => {
  const open = tenantMethods.filter((m) => m.props.AuthorizationType === 'NONE');
  expect(open.map((m) => `${m.method} ${m.path}`).sort()).toEqual([`GET ${HEALTH_ROUTE}`, `GET ${OPENAPI_ROUTE}`]);
  for (const m of open) expect(JSON.stringify(m.props.Integration.Uri)).toContain(fnId('api'));
});

test('the admin API is IAM-authorized on every method and goes to the admin function', () => {
  const admin = methods.filter((m) => m.api === adminApiId);
  expect(admin.length).toBeGreaterThan(0);
  for (const m of admin) {
    expect(m.props.AuthorizationType).toBe('AWS_IAM');
    expect(JSON.stringify(m.props.Integration.Uri)).toContain(fnId('admin'));
  }
  expect(admin.map((m) => m.path)).toContain('/admin/{proxy+}');
});

test('both stages: access logs, error logging, throttling, no data tracing', () => {
  const stages = resources(t, 'AWS::ApiGateway::Stage');
  expect(stages).toHaveLength(2);
  for (const [, s] of stages) {
    expect(s.Properties.StageName).toBe('dev');
    expect(s.Properties.AccessLogSetting.DestinationArn).toBeDefined();
    const fmt = JSON.parse(s.Properties.AccessLogSetting.Format);
    expect(fmt).toMatchObject({ requestId: '$context.requestId', status: '$context.status', tenantId: '$context.authorizer.tenant_id' });
    const [ms] = s.Properties.MethodSettings;
    expect(ms).toMatchObject({ LoggingLevel: 'ERROR', DataTraceEnabled: false, HttpMethod: '*', ResourcePath: '/*' });
    expect(ms.ThrottlingRateLimit).toBeGreaterThan(0);
    expect(ms.ThrottlingBurstLimit).toBeGreaterThanOrEqual(ms.ThrottlingRateLimit);
  }
});

test('gateway errors answer in OpenAI’s error shape', () => {
  const responses = resources(t, 'AWS::ApiGateway::GatewayResponse').map(([, r]) => r.Properties);
  const unauthorized = responses.find((r) => r.ResponseType === 'UNAUTHORIZED');
  const body = unauthorized.ResponseTemplates['application/json'].replace('$context.error.messageString', '"x"');
  expect(JSON.parse(body)).toEqual({ error: { message: 'x', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
  expect(responses.map((r) => r.ResponseType).sort()).toEqual(['ACCESS_DENIED', 'DEFAULT_4XX', 'DEFAULT_5XX', 'THROTTLED', 'UNAUTHORIZED']);
});

test('API Gateway may invoke exactly the api, admin and authorizer functions', () => {
  const perms = resources(t, 'AWS::Lambda::Permission').map(([, p]) => p.Properties);
  for (const p of perms) expect(p.Principal).toBe('apigateway.amazonaws.com');
  const targets = perms.map((p) => p.FunctionName['Fn::GetAtt'][0]).sort();
  expect(targets).toEqual([fnId('admin'), fnId('api'), fnId('authorizer')].sort());
});
