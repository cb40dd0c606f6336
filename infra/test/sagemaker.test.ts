import { endpointName } from '../lib/sagemaker';
import { asArray, resources, statementsOf, template } from './helpers';

test('no endpoint unless asked for', () => {
  template('prod').resourceCountIs('AWS::SageMaker::Endpoint', 0);
  template('dev').resourceCountIs('AWS::SageMaker::Model', 0);
});

describe('-c sagemaker=true', () => {
  const t = template('prodSagemaker');
  const [[, model]] = resources(t, 'AWS::SageMaker::Model');
  const [[, config]] = resources(t, 'AWS::SageMaker::EndpointConfig');
  const [[, endpoint]] = resources(t, 'AWS::SageMaker::Endpoint');

  test('the worker image serves the model version from /opt/ml/model, network-isolated, in the VPC', () => {
    const c = model.Properties.PrimaryContainer;
    expect(JSON.stringify(c.Image)).toContain('ecr');
    expect(c.Environment).toMatchObject({ TENANTAI_MODEL: '/opt/ml/model', TENANTAI_DEVICE: 'cuda:0' });
    expect(c.ModelDataSource.S3DataSource).toMatchObject({ S3DataType: 'S3Prefix', CompressionType: 'None' });
    expect(JSON.stringify(c.ModelDataSource.S3DataSource.S3Uri)).toContain('/models/all-MiniLM-L6-v2/');
    expect(model.Properties.EnableNetworkIsolation).toBe(true);
    expect(model.Properties.VpcConfig.Subnets).toHaveLength(2);
  });

  test('a GPU instance variant; the endpoint named as the api role may invoke', () => {
    expect(config.Properties.ProductionVariants[0]).toMatchObject({ InstanceType: 'ml.g5.xlarge', InitialInstanceCount: 2, VariantName: 'live' });
    expect(endpoint.Properties.EndpointName).toBe('tenantai-prod-all-MiniLM-L6-v2');
    expect(endpoint.Properties.EndpointName.startsWith('tenantai-prod-')).toBe(true);
  });

  test('its role reads the model prefix only', () => {
    const [roleId] = resources(t, 'AWS::IAM::Role').find(([, r]) => r.Properties.RoleName === 'tenantai-prod-sagemaker')!;
    const s3 = statementsOf(t, roleId).filter((s) => asArray(s.Action).some((a: string) => a.startsWith('s3:')));
    expect(s3.flatMap((s) => asArray(s.Action)).sort()).toEqual(['s3:GetObject', 's3:ListBucket']);
    expect(JSON.stringify(s3)).toContain('models/all-MiniLM-L6-v2/');
  });
});

test('endpoint names are valid SageMaker names', () => {
  expect(endpointName('tenantai-dev', 'all-MiniLM-L6-v2')).toBe('tenantai-dev-all-MiniLM-L6-v2');
  expect(endpointName('tenantai-dev', 'org/model_v1.5')).toBe('tenantai-dev-org-model-v1-5');
  expect(endpointName('tenantai-dev', 'x'.repeat(80))).toHaveLength(63);
});
