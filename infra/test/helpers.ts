// Builds a stage's stack offline, the way the tests and `scripts/lib/infra.sh` do:
// placeholder function and image directories in a temp dir, bundling skipped.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { FUNCTION_NAMES, recommendedFlags, StageConfig, stageConfig } from '../lib/config';
import { TenantaiStack } from '../lib/tenantai-stack';

let placeholders: string | undefined;

/** Function directories holding a stand-in `bootstrap`, and a stand-in image context. */
export function placeholderDirs(): string {
  if (placeholders) return placeholders;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tenantai-infra-'));
  for (const name of FUNCTION_NAMES) {
    fs.mkdirSync(path.join(root, 'lambda', name), { recursive: true });
    fs.writeFileSync(path.join(root, 'lambda', name, 'bootstrap'), `placeholder for ${name}\n`, { mode: 0o755 });
  }
  fs.mkdirSync(path.join(root, 'worker-image'), { recursive: true });
  fs.writeFileSync(path.join(root, 'worker-image', 'Dockerfile'), 'FROM scratch\n');
  placeholders = root;
  return root;
}

export interface Built {
  app: App;
  stack: TenantaiStack;
  template: Template;
}

export const ACCOUNT = '111122223333';
export const REGION = 'eu-west-1';

/** The stack variants the tests read, built once per run by global-setup.ts. */
export const VARIANTS = {
  dev: { context: { stage: 'dev' } },
  prod: { context: { stage: 'prod' } },
  prodSagemaker: { context: { stage: 'prod', sagemaker: 'true' } },
  devTenantCredentials: { context: { stage: 'dev' }, tenantCredentials: true },
} as const;
export type Variant = keyof typeof VARIANTS;

export const TEMPLATES_DIR = path.join(__dirname, '..', 'cdk.out', 'test-templates');

/** A variant's synthesized template (from global-setup.ts; built here if missing). */
export function template(variant: Variant): Template {
  const file = path.join(TEMPLATES_DIR, `${variant}.template.json`);
  if (!fs.existsSync(file)) {
    const v = VARIANTS[variant];
    return build(v.context, { tenantCredentials: 'tenantCredentials' in v ? v.tenantCredentials : false }).template;
  }
  return Template.fromJSON(JSON.parse(fs.readFileSync(file, 'utf8')));
}

export function build(
  context: Record<string, unknown> = {},
  opts: { tenantCredentials?: boolean; tweak?: (cfg: StageConfig) => StageConfig } = {},
): Built {
  const dirs = placeholderDirs();
  const app = new App({
    context: {
      ...recommendedFlags(),
      'aws:cdk:bundling-stacks': [],
      // What the CLI's zone lookup would answer (as -c availabilityZones does in CI).
      [`availability-zones:account=${ACCOUNT}:region=${REGION}`]: [`${REGION}a`, `${REGION}b`],
      ...context,
    },
    outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'tenantai-cdkout-')),
  });
  const read = stageConfig((k) => app.node.tryGetContext(k));
  const cfg = opts.tweak ? opts.tweak(read) : read;
  const stack = new TenantaiStack(app, `tenantai-${cfg.stage}`, {
    cfg,
    code: (name) => lambda.Code.fromAsset(path.join(dirs, 'lambda', name)),
    workerImageDir: path.join(dirs, 'worker-image'),
    tenantCredentials: opts.tenantCredentials,
    env: { account: ACCOUNT, region: REGION },
  });
  return { app, stack, template: Template.fromStack(stack) };
}

/** Every resource of a type, as [logicalId, resource] pairs. */
export function resources(template: Template, type: string): [string, any][] {
  return Object.entries(template.findResources(type));
}

/** A policy document's statements, whatever the resource holding it. */
export function statementsOf(template: Template, roleLogicalId: string): any[] {
  const out: any[] = [];
  for (const [, p] of resources(template, 'AWS::IAM::Policy')) {
    const roles = (p.Properties.Roles ?? []).map((r: any) => r.Ref);
    if (roles.includes(roleLogicalId)) out.push(...p.Properties.PolicyDocument.Statement);
  }
  const role = template.toJSON().Resources[roleLogicalId];
  for (const inline of role?.Properties?.Policies ?? []) out.push(...inline.PolicyDocument.Statement);
  return out;
}

export function asArray<T>(v: T | T[] | undefined): T[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}
