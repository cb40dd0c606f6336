// cdk-nag's AwsSolutions pack over whole stages: no finding left unacknowledged, and
// every acknowledgement gives a reason.
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { build, template } from './helpers';

function findings(app: App): string[] {
  const report = new AwsSolutionsChecks().validateScope(app);
  return report.violations.flatMap((v) => v.violatingResources.map((r) => `${v.severity} ${v.ruleName} ${r.constructPath ?? r.resourceLogicalId}`));
}

test('the pack is live: an unacknowledged finding is reported, an acknowledged one is not', () => {
  const app = new App();
  const stack = new Stack(app, 'probe');
  new s3.Bucket(stack, 'Plain');
  expect(findings(app).some((f) => f.startsWith('error AwsSolutions-S10'))).toBe(true);
  const app2 = new App();
  const stack2 = new Stack(app2, 'probe');
  const b = new s3.Bucket(stack2, 'Plain');
  for (const id of ['AwsSolutions-S1', 'AwsSolutions-S10']) Validations.of(b).acknowledge({ id, reason: 'probe' });
  expect(findings(app2)).toEqual([]);
});

// The fullest stage, shared by the tests below.
const prodSagemaker = build({ stage: 'prod', sagemaker: 'true' });

test('prod with SageMaker: no unacknowledged error or warning', () => {
  expect(findings(prodSagemaker.app)).toEqual([]);
});

test.each([
  ['dev', {}],
  ['prod', { stage: 'prod' }],
  ['dev with JWT and alarm mail', { jwksUrl: 'https://idp.example/.well-known/jwks.json', jwtIssuer: 'https://idp.example/', jwtAudience: 'tenantai', alarmEmail: 'ops@example.com' }],
])('%s: no unacknowledged error or warning', (_, context) => {
  const { app } = build(context);
  expect(findings(app)).toEqual([]);
});

test('every acknowledgement carries a written reason', () => {
  const { app } = prodSagemaker;
  let count = 0;
  for (const c of app.node.findAll()) {
    for (const m of c.node.metadata) {
      if (m.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
      for (const [id, reason] of Object.entries(m.data as Record<string, unknown>)) {
        // (aws-cdk-lib acknowledges some of its own CloudFormation-Validate warnings.)
        if (!id.includes('AwsSolutions-')) continue;
        count++;
        expect(typeof reason).toBe('string');
        expect((reason as string).length).toBeGreaterThan(30);
      }
    }
  }
  expect(count).toBeGreaterThan(20);
});

test('every checkov skip names its check and gives a reason', () => {
  const t = template('prodSagemaker');
  const skips = Object.values(t.toJSON().Resources as Record<string, any>).flatMap((r) => r.Metadata?.checkov?.skip ?? []);
  expect(skips.length).toBeGreaterThan(10);
  for (const s of skips) {
    expect(s.id).toMatch(/^CKV2?_AWS_\d+$/);
    expect(s.comment.length).toBeGreaterThan(30);
  }
});
