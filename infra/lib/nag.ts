// cdk-nag (AwsSolutions) acknowledgements that name a finding by the logical id of a
// resource in it; each carries its reason. Findings not acknowledged here or beside
// their resource fail the nag test (test/nag.test.ts) and the synth.
import { CfnResource, IResolvable, Stack, Validations } from 'aws-cdk-lib';
import { IConstruct } from 'constructs';

/** The logical id CloudFormation will see for a construct's L1 resource. */
export function logicalId(construct: IConstruct): string {
  const cfn = (construct.node.defaultChild ?? construct) as CfnResource;
  return Stack.of(construct).resolve(cfn.logicalId as string | IResolvable) as string;
}

/** Acknowledges one IAM5 finding: `<Logical.Arn>` + suffix, e.g. `/files/*`. */
export function ackArnWildcard(scope: IConstruct, resource: IConstruct, suffix: string, reason: string): void {
  Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[Resource::<${logicalId(resource)}.Arn>${suffix}]`, reason });
}

/** Acknowledges one IAM5 finding by its literal resource or action text. */
export function ackWildcard(scope: IConstruct, finding: string, reason: string): void {
  Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[${finding}]`, reason });
}

/**
 * Skips one checkov check on one resource, with the reason, as CloudFormation metadata
 * (`Metadata.checkov.skip`), which checkov reads and reports as skipped.
 */
export function checkovSkip(construct: IConstruct, id: string, comment: string): void {
  const cfn = (construct.node.defaultChild ?? construct) as CfnResource;
  const current = (cfn.getMetadata('checkov') as { skip: { id: string; comment: string }[] } | undefined) ?? { skip: [] };
  current.skip.push({ id, comment });
  cfn.addMetadata('checkov', current);
}
