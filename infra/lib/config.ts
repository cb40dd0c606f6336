// The deployment's settings for one stage, read from CDK context (`-c stage=dev|prod`,
// plus the optional keys below). Every resource name is derived from the stage.
import * as fs from 'fs';
import * as path from 'path';
import { Duration } from 'aws-cdk-lib';

export type StageName = 'dev' | 'prod';

/** The capacity one function gets. */
export interface FunctionSizing {
  readonly memoryMb: number;
  readonly timeout: Duration;
  /** Reserved concurrency; `undefined` when the stage reserves none. */
  readonly reservedConcurrency?: number;
}

export interface StageConfig {
  readonly stage: StageName;
  /** `tenantai-<stage>`: TENANTAI_RESOURCE_PREFIX, the table's name, every queue's prefix. */
  readonly prefix: string;
  /** Production keeps data on deletion, protects the table, keeps logs longer. */
  readonly prod: boolean;
  readonly logRetentionDays: number;
  readonly functions: Readonly<Record<FunctionName, FunctionSizing>>;
  /** Tenant API stage throttling (requests per second, burst). */
  readonly apiRateLimit: number;
  readonly apiBurstLimit: number;
  /** GPU worker fleet. */
  readonly worker: {
    readonly instanceTypes: string[];
    readonly maxInstances: number;
    readonly maxTasks: number;
    /** Share of instances above the base that are on-demand (0-100); the rest is spot. */
    readonly onDemandPercent: number;
    /** Work items outstanding per running task that the scaling aims at. */
    readonly backlogPerTask: number;
    /** How `gpu-worker work` drains the jobs queue (its `TENANTAI_BATCH_*` settings). */
    readonly batch: BatchSettings;
  };
  readonly natGateways: number;
  /** The optional SageMaker real-time endpoint (`-c sagemaker=true`). */
  readonly sagemaker?: {
    readonly instanceType: string;
    readonly instanceCount: number;
    /** The model version's directory in the bucket, under `models/`. */
    readonly modelPrefix: string;
    readonly modelId: string;
  };
  /** The model the worker fleet loads at start (`s3://<bucket>/<workerModelPrefix>`). */
  readonly workerModelPrefix: string;
  readonly workerModelId: string;
  /** Backups kept (the backup function's retention). */
  readonly backupKeepDaily: number;
  readonly backupKeepMonthly: number;
  /** Optional JWT validation for the authorizer. */
  readonly jwt?: { readonly jwksUrl: string; readonly issuer: string; readonly audience: string };
  /** Where alarm notifications are also mailed (an SNS email subscription), if anywhere. */
  readonly alarmEmail?: string;
}

/**
 * The CloudWatch namespace of the EMF metrics the functions write: one per stage, so that
 * two stages in one account do not mix. Passed as `TENANTAI_METRICS_NAMESPACE`; without it
 * `shared/src/gateway/telemetry.rs` writes to `DEFAULT_EMF_NAMESPACE`.
 */
/**
 * The worker loop's settings (`WorkerConfig::from_env` in `shared/src/batch/jobs.rs`),
 * passed to the worker as `TENANTAI_BATCH_*`.
 */
export interface BatchSettings {
  /** Jobs-queue messages worked on at once per task (TENANTAI_BATCH_WORKERS). */
  readonly workers: number;
  /** Lines of one chunk in flight at once (TENANTAI_BATCH_LINE_CONCURRENCY). */
  readonly lineConcurrency: number;
  /** Most lines, and about the most tokens, of one chunk (TENANTAI_BATCH_CHUNK_LINES/_TOKENS). */
  readonly chunkLines: number;
  readonly chunkTokens: number;
  /**
   * Each receive hides a message this long, and a heartbeat extends it every third of
   * it (TENANTAI_BATCH_VISIBILITY_SECS): a crashed worker's message reappears within it.
   */
  readonly visibility: Duration;
  /** After SIGTERM, in-flight work may go on this long, then is handed back (TENANTAI_BATCH_GRACE_SECS). */
  readonly grace: Duration;
  /** Long-poll wait of one receive (TENANTAI_BATCH_WAIT_SECS; SQS allows up to 20 s). */
  readonly wait: Duration;
  /** How long a message handed back after a failure stays hidden (TENANTAI_BATCH_RETRY_SECS). */
  readonly retry: Duration;
}

export const METRICS_NAMESPACE_VAR = 'TENANTAI_METRICS_NAMESPACE';
export const DEFAULT_EMF_NAMESPACE = 'tenantai';
export function emfNamespace(cfg: Pick<StageConfig, 'stage'>): string {
  return `${DEFAULT_EMF_NAMESPACE}/${cfg.stage}`;
}

export const FUNCTION_NAMES = ['api', 'admin', 'authorizer', 'metering', 'cost-alerts', 'backup'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

/** What the CLI or a test passes as context (all strings from `-c key=value`). */
export type Context = (key: string) => unknown;

function bool(v: unknown, dflt: boolean): boolean {
  if (v === undefined || v === null || v === '') return dflt;
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new Error(`expected true or false, got ${JSON.stringify(v)}`);
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** The stage's settings from context; throws on an unknown stage. */
export function stageConfig(ctx: Context): StageConfig {
  const stage = (ctx('stage') ?? 'dev') as string;
  if (stage !== 'dev' && stage !== 'prod') {
    throw new Error(`-c stage must be dev or prod, got ${JSON.stringify(stage)}`);
  }
  const prod = stage === 'prod';
  // A fresh account has a low concurrency quota; reserving needs 100 left unreserved.
  const reserve = bool(ctx('reserveConcurrency'), true);
  const r = (n: number) => (reserve ? n : undefined);
  const sizing = (memoryMb: number, seconds: number, reserved: number): FunctionSizing => ({
    memoryMb,
    timeout: Duration.seconds(seconds),
    reservedConcurrency: r(reserved),
  });
  const jwksUrl = str(ctx('jwksUrl'));
  const jwt = jwksUrl
    ? {
        jwksUrl,
        issuer: str(ctx('jwtIssuer')) ?? fail('jwtIssuer is required with jwksUrl'),
        audience: str(ctx('jwtAudience')) ?? fail('jwtAudience is required with jwksUrl'),
      }
    : undefined;
  const modelId = str(ctx('workerModelId')) ?? 'all-MiniLM-L6-v2';
  return {
    stage,
    prefix: `tenantai-${stage}`,
    prod,
    logRetentionDays: prod ? 365 : 30,
    functions: {
      // The api streams chat answers: up to 5 minutes per request.
      api: sizing(1024, 300, prod ? 200 : 20),
      admin: sizing(512, 30, prod ? 10 : 2),
      authorizer: sizing(256, 10, prod ? 200 : 20),
      metering: sizing(256, 30, prod ? 10 : 2),
      'cost-alerts': sizing(256, 300, 1),
      backup: sizing(1024, 900, 1),
    },
    apiRateLimit: prod ? 1000 : 50,
    apiBurstLimit: prod ? 2000 : 100,
    worker: {
      instanceTypes: ['g5.xlarge', 'g6.xlarge', 'g4dn.xlarge'],
      maxInstances: prod ? 8 : 2,
      maxTasks: prod ? 8 : 2,
      onDemandPercent: prod ? 25 : 0,
      backlogPerTask: 20,
      batch: {
        workers: 2,
        lineConcurrency: 64,
        chunkLines: 500,
        chunkTokens: 1_000_000,
        visibility: Duration.seconds(120),
        grace: Duration.seconds(90),
        wait: Duration.seconds(20),
        retry: Duration.seconds(30),
      },
    },
    natGateways: prod ? 2 : 1,
    sagemaker: bool(ctx('sagemaker'), false)
      ? {
          instanceType: str(ctx('sagemakerInstanceType')) ?? 'ml.g5.xlarge',
          instanceCount: Number(str(ctx('sagemakerInstanceCount')) ?? (prod ? 2 : 1)),
          modelPrefix: str(ctx('sagemakerModelPrefix')) ?? `models/${modelId}`,
          modelId,
        }
      : undefined,
    workerModelPrefix: str(ctx('workerModelPrefix')) ?? `models/${modelId}`,
    workerModelId: modelId,
    backupKeepDaily: 7,
    backupKeepMonthly: prod ? 12 : 3,
    jwt,
    alarmEmail: str(ctx('alarmEmail')),
  };
}

function fail(message: string): never {
  throw new Error(message);
}

/** aws-cdk-lib's recommended feature flags, so tests and the CLI synthesize alike. */
export function recommendedFlags(): Record<string, unknown> {
  const file = path.join(path.dirname(require.resolve('aws-cdk-lib/package.json')), 'recommended-feature-flags.json');
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}
