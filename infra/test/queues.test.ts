import * as fs from 'fs';
import * as path from 'path';
import { stageConfig } from '../lib/config';
import { MAX_RECEIVES } from '../lib/queues';
import { resources, template } from './helpers';

const t = template('dev');
const queues = resources(t, 'AWS::SQS::Queue');
const byName = (name: string) => {
  const q = queues.find(([, r]) => r.Properties.QueueName === name);
  if (!q) throw new Error(`no queue ${name}`);
  return q;
};

test('the queue names and max receives are the ones the Rust code derives (Resources::named)', () => {
  const rust = fs.readFileSync(path.join(__dirname, '..', '..', 'shared', 'src', 'store', 'mod.rs'), 'utf8');
  expect(rust).toMatch(/with_dlq\("usage"\)/);
  expect(rust).toMatch(/with_dlq\("jobs"\)/);
  expect(rust).toMatch(/format!\("\{prefix\}-\{name\}-dlq"\)/);
  expect(rust).toContain(`max_receives: ${MAX_RECEIVES},`);
  for (const name of ['usage', 'usage-dlq', 'jobs', 'jobs-dlq']) byName(`tenantai-dev-${name}`);
});

test('usage and jobs redrive to their own DLQ after the code’s max receives', () => {
  for (const name of ['usage', 'jobs']) {
    const [, q] = byName(`tenantai-dev-${name}`);
    const [dlqId] = byName(`tenantai-dev-${name}-dlq`);
    expect(q.Properties.RedrivePolicy).toEqual({
      deadLetterTargetArn: { 'Fn::GetAtt': [dlqId, 'Arn'] },
      maxReceiveCount: MAX_RECEIVES,
    });
  }
});

test('every queue is encrypted with the stage key', () => {
  expect(queues).toHaveLength(5);
  const [[keyId]] = resources(t, 'AWS::KMS::Key');
  for (const [, q] of queues) {
    expect(q.Properties.KmsMasterKeyId).toEqual({ 'Fn::GetAtt': [keyId, 'Arn'] });
  }
});

test('every queue has a policy denying requests without TLS', () => {
  const policies = resources(t, 'AWS::SQS::QueuePolicy');
  const covered = new Set<string>();
  for (const [, p] of policies) {
    const denies = p.Properties.PolicyDocument.Statement.some(
      (s: any) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false',
    );
    if (denies) for (const q of p.Properties.Queues) covered.add(q.Ref);
  }
  expect([...covered].sort()).toEqual(queues.map(([id]) => id).sort());
});

test('the usage queue hides a message 6x the metering timeout', () => {
  const [, usage] = byName('tenantai-dev-usage');
  const [, metering] = resources(t, 'AWS::Lambda::Function').find(([, f]) => f.Properties.FunctionName === 'tenantai-dev-metering')!;
  expect(usage.Properties.VisibilityTimeout).toBeGreaterThanOrEqual(6 * metering.Properties.Timeout);
});

test('the jobs queue: the worker’s visibility (kept by heartbeat) and long polls of its wait', () => {
  const { batch } = stageConfig(() => undefined).worker;
  const [, jobs] = byName('tenantai-dev-jobs');
  expect(jobs.Properties.VisibilityTimeout).toBe(batch.visibility.toSeconds());
  expect(jobs.Properties.VisibilityTimeout).toBe(120);
  expect(jobs.Properties.ReceiveMessageWaitTimeSeconds).toBe(batch.wait.toSeconds());
  expect(batch.wait.toSeconds()).toBeLessThanOrEqual(20);
});

test('messages are kept 14 days (the metering claims outlive them: 30 days)', () => {
  for (const [, q] of queues) expect(q.Properties.MessageRetentionPeriod).toBe(14 * 24 * 3600);
});
