// Synthesizes each stack variant once per test run; the test files read the templates.
// (The first synthesis in a process costs ~20 s on 2 cores: module loading.)
import * as fs from 'fs';
import * as path from 'path';
import { build, TEMPLATES_DIR, Variant, VARIANTS } from './helpers';

export default async function globalSetup(): Promise<void> {
  fs.rmSync(TEMPLATES_DIR, { recursive: true, force: true });
  fs.mkdirSync(TEMPLATES_DIR, { recursive: true });
  for (const [name, v] of Object.entries(VARIANTS) as [Variant, (typeof VARIANTS)[Variant]][]) {
    const { template } = build(v.context, { tenantCredentials: 'tenantCredentials' in v ? v.tenantCredentials : false });
    fs.writeFileSync(path.join(TEMPLATES_DIR, `${name}.template.json`), JSON.stringify(template.toJSON()));
  }
}
