// bench/cache-tests/loopback-only.mjs -- moxy's harness shim, not part of the
// cache-tests suite: forces every server.listen() in this process onto
// 127.0.0.1, so the suite's origin server never listens on a non-loopback
// address (upstream listens on all). run.sh loads it with `node --import`.
import net from 'node:net'

const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const port = Number(args[0])
    const rest = args.slice(1).filter(a => typeof a === 'function')
    return origListen.call(this, { port, host: '127.0.0.1' }, ...rest)
  }
  if (args[0] && typeof args[0] === 'object' && !('fd' in args[0]) && !('path' in args[0])) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' })
  }
  return origListen.apply(this, args)
}
