// bench/cache-tests/undici7-dispatcher.mjs -- moxy's harness shim, not part of
// the cache-tests suite; run.sh loads it into the suite's client with
// `node --import`.
//
// The suite's client collects interim (1xx) responses with an undici 7
// interceptor composed onto the global dispatcher (`await import('undici')` in
// test-engine/client/test.mjs). Node 20's built-in fetch uses an undici 6 Agent
// as the global dispatcher, which rejects undici-7-style handlers ("invalid
// onError method"), and every interim test errors out. So this shim:
//  1. makes every import of 'undici' in this process resolve to the undici 7
//     that run.sh installed in CT_NODE_DEPS (a scratch/cache directory, so
//     nothing is installed into the suite's checkout), and
//  2. installs an undici 7 Agent as the global dispatcher, which gives Node 20
//     the behaviour the suite gets on a Node whose bundled undici is 7.x.
import { register } from 'node:module'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const deps = process.env.CT_NODE_DEPS
if (!deps || !existsSync(join(deps, 'node_modules', 'undici', 'package.json'))) {
  throw new Error(`undici7-dispatcher.mjs: no undici in CT_NODE_DEPS (${deps}); run bench/cache-tests/run.sh`)
}
// resolve 'undici' as if it were imported from a file in CT_NODE_DEPS
const parentURL = pathToFileURL(join(deps, 'package.json')).href
const hook = 'export async function resolve (specifier, context, next) {\n' +
  "  if (specifier === 'undici' || specifier.startsWith('undici/')) {\n" +
  `    return next(specifier, { ...context, parentURL: ${JSON.stringify(parentURL)} })\n` +
  '  }\n' +
  '  return next(specifier, context)\n' +
  '}\n'
register('data:text/javascript,' + encodeURIComponent(hook))

const { Agent, setGlobalDispatcher } = await import('undici')
setGlobalDispatcher(new Agent())
