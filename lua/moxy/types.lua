---@meta
-- LuaLS annotations of moxy's script API, for editors (completion and type
-- checks).  Not loaded by moxy.  Point your editor's Lua language server at
-- this directory (e.g. `"workspace.library": ["/usr/local/share/moxy/lua"]`).

---@class moxy.Headers
local Headers = {}

---First value of header `name` (case-insensitive), or nil.
---@param name string
---@return string|nil
function Headers:get(name) end

---Every value of header `name`, in order (maybe empty).
---@param name string
---@return string[]
function Headers:get_all(name) end

---Replace every `name` header by one with `value`.  Raises on an invalid name
---or value (CR, LF, NUL, ...).
---@param name string
---@param value string|number
function Headers:set(name, value) end

---Add a `name` header, keeping the others.
---@param name string
---@param value string|number
function Headers:add(name, value) end

---Remove every `name` header.
---@param name string
function Headers:remove(name) end

---Iterate over `name, value` pairs in order (repeats included).
---@return fun(): string, string
function Headers:each() end

---@class moxy.Request
---@field method string
---@field uri string                 path and query as received (or as rewritten)
---@field path string                settable: the path sent to the origin
---@field query string|nil           settable (nil: no query)
---@field args table<string, string|string[]>  the query parsed; settable from a table
---@field host string|nil
---@field scheme string
---@field http_version string        "1.1", "1.0" or "2"
---@field headers moxy.Headers

---@class moxy.Response
---@field status integer|nil         settable in on_response
---@field headers moxy.Headers
---@field filter boolean             set false (until on_response) to skip on_body

---@class moxy.Client
---@field ip string                  the real client (trusted_proxies' header, PROXY source, TCP peer)
---@field port integer|nil           its port (nil when a trusted proxy's header gave none)
---@field socket_ip string           the TCP peer (the load balancer, when there is one)
---@field socket_port integer        the TCP peer's port
---@field geo moxy.Geo                the client's GeoIP fields (with `geoip` configured), each looked up on first use

---The client's GeoIP fields (docs/geoip.md); nil when the databases do not know one.
---@class moxy.Geo
---@field country string|nil         ISO code, "GB"
---@field country_name string|nil   "United Kingdom"
---@field continent string|nil       "EU"
---@field continent_name string|nil
---@field registered_country string|nil
---@field city string|nil
---@field subdivision string|nil     "ENG" (the first, largest)
---@field subdivision_name string|nil
---@field postal string|nil
---@field lat number|nil
---@field lon number|nil
---@field accuracy_radius number|nil km
---@field time_zone string|nil       "Europe/London"
---@field asn integer|nil            from an ASN database
---@field as_org string|nil
---@field is_anonymous boolean|nil   from an Anonymous-IP database (nil: not listed)
---@field is_anonymous_vpn boolean|nil
---@field is_hosting_provider boolean|nil
---@field is_public_proxy boolean|nil
---@field is_tor_exit_node boolean|nil
---@field is_residential_proxy boolean|nil

---@class moxy.Upstream
---@field pool string|nil            the pool picked so far
---@field peer string|nil            "ip:port" of the peer of this (or the last) try
---@field tries integer              the number of this try (1 for the first)
---@field status integer|nil         the origin's status, before on_response changed it
---@field connect_time number|nil    seconds from the try's start to connected
---@field header_time number|nil     seconds from the try's start to the response head
---@field response_time number|nil   seconds from the try's start to the last byte
local Upstream = {}

---Send the request (this try) to the pool called `pool` (raises if there is none).
---opts.hash: the key a balance = "hash" pool maps to a peer (default: txn.client.ip, the real client).
---opts.peer: one of the pool's server addresses, preferred while it is usable.
---@param pool string
---@param opts? { hash?: string|number, peer?: string }
function Upstream:pick(pool, opts) end

---Send this try to ip:port instead of a pool's server (an IP literal).
---@param ip string
---@param port integer
function Upstream:set_peer(ip, port) end

---Allow (true) or forbid (false) retries on another peer for this request.
---@param yes boolean
function Upstream:retryable(yes) end

---@class moxy.Cache
---@field key string|nil             the cache key (default "http://host/path?sorted&query"); settable in on_request, on_cache_key
---@field status string|nil          "hit", "miss", "stale", "bypass", or "background" (a request moxy makes to fill the cache); nil without a lookup
---@field age number|nil             seconds, the age of the object a hit serves
local Cache = {}

---No lookup and no store for this request (on_request, on_cache_key).
function Cache:bypass() end

---Do not store this response.
function Cache:no_store() end

---Store this response for opts.ttl seconds whatever its Cache-Control says (on_response).
---@param opts { ttl: number, stale?: number }
function Cache:store(opts) end

---@class moxy.Txn
---@field cache moxy.Cache
---@field log_field fun(self: moxy.Txn, name: string, value: string|number|boolean)  add name=value to the access-log line
---@field req moxy.Request
---@field resp moxy.Response
---@field client moxy.Client
---@field upstream moxy.Upstream
---@field ctx table                  yours, from the first hook to on_log, across retries
---@field id string                  the request id
---@field listener string            the listener's name
---@field error string|nil           in on_error (and on_upstream on a retry): why it failed
---@field started number             when the request's first byte came (epoch seconds)
---@field duration number            seconds since then
---@field bytes_sent number          response body bytes sent to the client
local Txn = {}

---Wait for the whole request body (up to max bytes, default limits.body_bytes).
---Over the limit: nil, "request body too large" (and a 413 unless a hook answers).
---@param max? integer
---@return string|nil body, string|nil err
function Txn:read_body(max) end

---Answer the request now; later hooks of the phase are skipped.
---@param status integer
---@param body? string
---@param headers? table<string, string|string[]>
function Txn:respond(status, body, headers) end

---Answer with a redirect (301, 302 (default), 303, 307 or 308).
---@param url string
---@param status? integer
function Txn:redirect(url, status) end

-- Helper modules (require "moxy.router", ...) -----------------------------

---@class moxy.Router
local Router = {}
---@param methods string|string[]   "GET", "*" or a list
---@param pattern string            "/exact", "/users/:id", "/static/*"
---@param handler fun(txn: moxy.Txn, params: table)
---@param opts? { host?: string, strict_slash?: boolean }
---@return moxy.Router
function Router:add(methods, pattern, handler, opts) end
---@return moxy.Router
function Router:get(pattern, handler, opts) end
---@return moxy.Router
function Router:post(pattern, handler, opts) end
---@return moxy.Router
function Router:put(pattern, handler, opts) end
---@return moxy.Router
function Router:delete(pattern, handler, opts) end
---@return moxy.Router
function Router:patch(pattern, handler, opts) end
---@return moxy.Router
function Router:head(pattern, handler, opts) end
---@return moxy.Router
function Router:options(pattern, handler, opts) end
---@return moxy.Router
function Router:any(pattern, handler, opts) end
---@param method string
---@param host string|nil
---@param path string
---@return function|nil handler, table|nil params
function Router:match(method, host, path) end
---@param txn moxy.Txn
---@return boolean matched
function Router:dispatch(txn) end

---@class moxy.router
---@field new fun(): moxy.Router

---@class moxy.cookie
---@field parse fun(header: string): table<string, string>
---@field get fun(txn: moxy.Txn, name: string): string|nil
---@field build fun(name: string, value: string|number, opts?: { path?: string, domain?: string, max_age?: number, expires?: number, secure?: boolean, http_only?: boolean, same_site?: string }): string
---@field http_date fun(epoch: number): string

---@class moxy.query
---@field parse fun(qs: string, max?: integer): table<string, string|string[]>
---@field encode fun(t: table): string
---@field escape fun(s: string): string
---@field unescape fun(s: string): string

---@class moxy.url.parts
---@field scheme string|nil
---@field userinfo string|nil
---@field host string|nil
---@field port integer|nil
---@field path string|nil
---@field query string|nil
---@field fragment string|nil

---@class moxy.url
---@field parse fun(s: string): moxy.url.parts|nil, string|nil
---@field build fun(t: moxy.url.parts): string
---@field join fun(base: string, ref: string): string|nil, string|nil
---@field remove_dot_segments fun(path: string): string

---@class moxy.Hooks
---@field init? fun()
---@field worker_init? fun()
---@field on_request? fun(txn: moxy.Txn)
---@field on_upstream? fun(txn: moxy.Txn): string|nil   may return a pool name
---@field on_upstream_request? fun(txn: moxy.Txn)
---@field on_response? fun(txn: moxy.Txn)
---@field on_body? fun(txn: moxy.Txn, chunk: string, eof: boolean): string|nil
---@field on_log? fun(txn: moxy.Txn)
---@field on_error? fun(txn: moxy.Txn)
---@field on_cache_key? fun(txn: moxy.Txn): string|nil   may return the cache key

---@class moxy.Log
---@field err fun(...: any)
---@field warn fun(...: any)
---@field info fun(...: any)
---@field debug fun(...: any)

---@class moxy.timer
---@field at fun(delay: number, fn: function, ...: any): integer|nil, string|nil
---@field every fun(interval: number, fn: function, ...: any): integer|nil, string|nil
---@field cancel fun(id: integer): boolean

---@class moxy
---@field version string
---@field log moxy.Log
---@field timer moxy.timer
---@field json { encode: fun(v: any): string|nil, string|nil, decode: fun(s: string): any, string|nil, null: any }
moxy = {}

---Park the running hook (or timer callback) for `seconds` without blocking the worker.
---@param seconds number
function moxy.sleep(seconds) end

---With watch = true: reload when the file at path (relative to the configuration) changes.
---@param path string
---@return boolean
function moxy.watch(path) end

---@class moxy.cache
---@field purge fun(key: string): integer|nil, string|nil          objects dropped (every variant of key)
---@field purge_prefix fun(prefix: string): integer|nil, string|nil objects whose key starts with prefix
moxy.cache = {}

---@class moxy.fleet
---@field delete fun(dict: string, key: string): boolean, string|nil  delete here, then on every node (docs/fleet.md)
---@field flush fun(dict: string): boolean, string|nil               flush_all here, then on every node
moxy.fleet = {}

return moxy

-- moxy.re (lua/moxy/re.lua, docs/re.md): PCRE2 regular expressions -----------
-- (comments only: they may follow the `return` above)

---Captures of a match: [0] the whole match, [1..n] the groups (false when a
---group did not take part), named groups also under their names.
---@alias moxy.re.Captures table<integer|string, string|false>

---@class moxy.re
---@field version string   PCRE2's version, e.g. "10.42 2022-12-11"
---@field jit boolean      whether PCRE2 JIT-compiles patterns
---opts: flags "i" caseless, "m" multiline, "s" dotall, "x" extended, "u" UTF-8,
---"a" anchored at init, "D" duplicate names ("j", "o" ignored).  Errors: nil, err.
---@field match fun(subject: string, pattern: string, opts?: string, init?: integer): moxy.re.Captures|nil, string|nil
---@field find fun(subject: string, pattern: string, opts?: string, init?: integer): integer|nil, integer|string|nil
---@field gmatch fun(subject: string, pattern: string, opts?: string): (fun(): moxy.re.Captures|nil, string|nil)|nil, string|nil
---@field sub fun(subject: string, pattern: string, repl: string|fun(m: moxy.re.Captures): string|number|false|nil, opts?: string): string|nil, integer|string
---@field gsub fun(subject: string, pattern: string, repl: string|fun(m: moxy.re.Captures): string|number|false|nil, opts?: string): string|nil, integer|string
---@field split fun(subject: string, pattern: string, opts?: string, max?: integer): string[]|nil, string|nil
---@field set_limits fun(limits: { match?: integer, depth?: integer })

---@class moxy
---@field re moxy.re

-- moxy.shared (lua/moxy/shared.lua, docs/shared.md): dicts shared by the workers
-- (comments only: they may follow the `return` above)

---A dict of moxy.shared, declared in the configuration: shared = { NAME = "10m" }.
---Keys are strings of 1..65535 bytes; values strings, numbers, booleans or
---tables (stored as copies).  ttl: seconds, nil or 0 = never expires.
---Wrong argument types raise ("shared.NAME:set: key must be a string, got nil").
---@class moxy.SharedDict
---The value, or nil when absent or expired.
---@field get fun(self: moxy.SharedDict, key: string): string|number|boolean|table|nil
---true, or nil, "no memory".  A nil value deletes the key.
---@field set fun(self: moxy.SharedDict, key: string, value: string|number|boolean|table|nil, ttl?: number): true|nil, string|nil
---true, or nil, "exists" (or "no memory"): stores only an absent key.
---@field add fun(self: moxy.SharedDict, key: string, value: string|number|boolean|table, ttl?: number): true|nil, string|nil
---true, or nil, "not found" (or "no memory"): stores only a present key.
---@field replace fun(self: moxy.SharedDict, key: string, value: string|number|boolean|table, ttl?: number): true|nil, string|nil
---Atomic add; an absent key starts at init (with ttl) or gives nil, "not found";
---nil, "not a number" when the value is not a number.
---@field incr fun(self: moxy.SharedDict, key: string, by: number, init?: number, ttl?: number): number|nil, string|nil
---@field delete fun(self: moxy.SharedDict, key: string)
---Seconds left (0: never expires), or nil, "not found".
---@field ttl fun(self: moxy.SharedDict, key: string): number|nil, string|nil
---true, or nil, "not found".  ttl 0: never expires.
---@field expire fun(self: moxy.SharedDict, key: string, ttl: number): true|nil, string|nil
---Up to max keys (default 1024; 0: all), in no particular order.
---@field keys fun(self: moxy.SharedDict, max?: integer): string[]|nil, string|nil
---@field flush_all fun(self: moxy.SharedDict)
---@field stats fun(self: moxy.SharedDict): moxy.SharedDictStats

---@class moxy.SharedDictStats
---@field capacity integer   bytes: the configured size
---@field used integer       bytes counted: keys + values + per-item overhead
---@field items integer      items held (expired ones not met yet included)
---@field evictions integer  live items dropped to make room
---@field hits integer       get calls that found their key
---@field misses integer     get calls that did not

---moxy.shared.NAME is the dict declared as NAME (an error when there is none).
---@class moxy.shared
---For tests and tools: the dict `name`, created with `size` bytes when absent.
---@field create fun(name: string, size: integer|string): moxy.SharedDict
---@field [string] moxy.SharedDict

---@class moxy
---@field shared moxy.shared

-- moxy.http (lua/moxy/http.lua, docs/http.md): the non-blocking HTTP/1.1 client
-- (comments only: they may follow the `return` above)

---Options of moxy.http.request.
---@class moxy.http.Options
---@field url string                 "http://host[:port]/path?query" (https: not yet)
---@field method? string             default "GET"
---@field headers? table<string, string|number|(string|number)[]>  Host, User-Agent defaulted; Content-Length/Transfer-Encoding come from body
---@field body? string
---@field timeout? number            seconds for the whole call (default 10)
---@field connect_timeout? number    seconds per connect (default: the config's timeouts.connect)
---@field max_body? integer|string   bytes or "64k" (default 16 MiB); more: nil, "body too large"
---@field keepalive? boolean         keep the connection for the next call (default true)

---A response.  headers: lower-case names; repeated headers joined with ", ",
---except set-cookie, a list of strings.
---@class moxy.http.Response
---@field status integer
---@field headers table<string, string|string[]>
---@field body string

---In hooks (every phase) and moxy.timer callbacks; the hook waits, the worker does not.
---Raises on wrong argument types; returns nil, err on failure ("timeout",
---"connect: connection refused", "body too large", "invalid response: ...", "closed", ...).
---@class moxy.http
---@field request fun(opts: moxy.http.Options): moxy.http.Response|nil, string|nil
---@field get fun(url: string, opts?: moxy.http.Options|table): moxy.http.Response|nil, string|nil

---@class moxy
---@field http moxy.http

-- moxy.test (lua/moxy/test.lua, docs/testing.md): hooks tested without a server
-- (comments only: they may follow the `return` above)

---A request for t.run (t.txn's fields; all optional).
---@class moxy.test.TxnFields
---@field method? string             default "GET"
---@field path? string               default "/"; may hold "?query"
---@field query? string              appended after "?"
---@field host? string|false         the Host header (default "localhost"; false: none, HTTP/1.0 only)
---@field headers? table<string, string|number|string[]>|{ [1]: string, [2]: string }[]
---@field client_ip? string          default "127.0.0.1"
---@field client_port? integer       default 54321
---@field body? string               sent with Content-Length, already buffered (txn:read_body)
---@field http_version? "1.1"|"1.0"

---What the fake origin received for a try.
---@class moxy.test.OriginRequest
---@field method string
---@field uri string
---@field path string
---@field query string|nil
---@field http_version string
---@field host string|nil
---@field headers moxy.test.OriginHeaders
---@field body string
---@field pool string|nil
---@field peer string

---The origin's headers in order ({ name, value } pairs), hop-by-hop ones removed.
---@class moxy.test.OriginHeaders: { [integer]: { [1]: string, [2]: string } }
---@field get fun(self: moxy.test.OriginHeaders, name: string): string|nil
---@field get_all fun(self: moxy.test.OriginHeaders, name: string): string[]

---A fake origin: fn returns status, body, headers; or raises / returns nil, err (a failed try).
---@alias moxy.test.OriginFn fun(req: moxy.test.OriginRequest): integer|nil, string|nil, table<string, string|number|string[]>|nil

---@class moxy.test.Upstream
---@field fn moxy.test.OriginFn
---@field calls integer                          times it was asked
---@field requests moxy.test.OriginRequest[]     every req it got

---t.run's opts.cache: run as a moxy with `cache = {...}` would, without a store.
---@class moxy.test.CacheOptions
---@field max_object? integer        bytes (default 16 MiB)

---Whether the response would be stored (t.run with opts.cache).
---@class moxy.test.Stored
---@field ttl? number                stored for this many seconds
---@field why? string                not stored, and why

---@class moxy.test.Options
---@field upstreams? table<string, moxy.test.Upstream|moxy.test.OriginFn>  the pools and their fake origins
---@field peers? table<string, moxy.test.Upstream|moxy.test.OriginFn>      "ip:port" -> origin, for upstream:set_peer
---@field default_upstream? string   default: the only pool
---@field tries? integer             every pool's tries (default 2)
---@field chunk_size? integer        response body bytes per on_body call (default: all)
---@field http? fun(opts: table): moxy.http.Response|nil, string|nil  answers moxy.http.request
---@field shared? table<string, integer|string>  moxy.shared dicts to create
---@field geoip? table<string, string>  { name = "path.mmdb" }: the GeoIP databases (txn.client.geo)
---@field cache? moxy.test.CacheOptions  {} or { max_object = bytes }: the key, on_cache_key and txn.cache as with a cache

---@class moxy.test.LogLine
---@field level "err"|"warn"|"info"|"debug"
---@field message string

---t.run's result: the txn after on_log.  txn.req/resp/client/upstream read the
---last t.run's request.  Also txn.resp.body (what the client got),
---txn.upstream.request / .requests (what the origin got).
---@class moxy.test.Result: moxy.Txn
---@field logs moxy.test.LogLine[]   moxy.log calls and moxy's own lines of the run
---@field phases string[]            the phases whose hooks ran, in order
---@field error string|nil           why moxy answered with an error ("on_request: file:line: msg")
---@field stored moxy.test.Stored|nil  with opts.cache: whether the response would be stored (nil: no origin answered)

---Scripts compiled once (t.load).
---@class moxy.test.Loaded

---@alias moxy.test.Scripts string|moxy.Hooks|(string|moxy.Hooks)[]|moxy.test.Loaded

---require "moxy.test"
---@class moxy.test
---@field txn fun(fields?: moxy.test.TxnFields): moxy.test.TxnFields
---@field upstream fun(fn: moxy.test.OriginFn): moxy.test.Upstream
---@field load fun(scripts: moxy.test.Scripts): moxy.test.Loaded
---@field run fun(scripts: moxy.test.Scripts, txn?: moxy.test.TxnFields, opts?: moxy.test.Options): moxy.test.Result

-- moxy.upstream (lua/moxy/upstream.lua, docs/upstreams.md): the pools' shared state
-- (comments only: they may follow the `return` above)

---@class moxy.upstream.Peer
---@field addr string             as configured
---@field state "up"|"down"|"unhealthy"|"drained"|"unresolved"
---@field weight integer          configured
---@field weight_now number       with slow start
---@field backup boolean
---@field max_conns integer       0: no limit
---@field active integer          requests in flight, all workers
---@field ewma_ms number          latency EWMA to the response head; 0: no sample
---@field fails integer           consecutive failures
---@field down_for number         seconds of ejection left
---@field requests integer
---@field failures integer
---@field checks integer          active health checks run
---@field check_error string      why the last check failed, "" when it passed

---@class moxy.upstream
---@field peers fun(pool: string): moxy.upstream.Peer[]|nil, string|nil
---Peers that can take a request now (up, not drained, under max_conns); cheap, for every request.
---@field usable fun(pool: string): integer|nil, string|nil
---@field drain fun(pool: string, addr: string): true|nil, string|nil
---@field enable fun(pool: string, addr: string): true|nil, string|nil
---@field stats fun(pool: string): { retries: integer, retries_denied: integer }|nil, string|nil

---@class moxy
---@field upstream moxy.upstream

-- moxy.geo (lua/moxy/geo.lua, docs/geoip.md): GeoIP lookups and geo routing
-- (comments only: they may follow the `return` above)

---A region of a set: where it is, and its pool.
---@class moxy.geo.Region
---@field name string
---@field lat number
---@field lon number
---@field pool string               its pool (default: the region's name)

---@class moxy.geo.Regions
---The region for this client with a live pool: listed country/continent, else nearest; nil when none is live.
---@field nearest fun(self: moxy.geo.Regions, txn: moxy.Txn, exclude?: table<string, boolean>): string|nil, moxy.geo.Region|nil
---txn.upstream:pick the pool of nearest(txn, exclude); returns its name (nil: none live, the pool stays).
---@field pick fun(self: moxy.geo.Regions, txn: moxy.Txn, exclude?: table<string, boolean>): string|nil
---The regions by distance from lat, lon, nearest first (live_only: pools with a usable peer).
---@field nearest_to fun(self: moxy.geo.Regions, lat: number, lon: number, live_only?: boolean): { region: moxy.geo.Region, km: number }[]
---@field get fun(self: moxy.geo.Regions, name: string): moxy.geo.Region|nil

---@class moxy.geo
---One of txn.client.geo's fields for any address (nil: unknown, or not an address).
---@field get fun(ip: string, field: string): string|number|boolean|nil
---The whole record as the database holds it (db: one database; none: all merged), or nil, err.
---@field lookup fun(ip: string, db?: string): table|nil, string|nil
---@field databases fun(): string[]
---Great-circle distance in km.
---@field distance fun(lat1: number, lon1: number, lat2: number, lon2: number): number
---A region set; countries/continents: codes that belong to a region whatever the distance;
---opts.default: the region for clients without a location.
---@field regions fun(list: table<string, { lat: number, lon: number, pool?: string, countries?: string[], continents?: string[] }>, opts?: { default?: string }): moxy.geo.Regions
---A function (txn) -> map[the client's country code] or default.
---@field by_country fun(map: table<string, any>, default?: any): fun(txn: moxy.Txn): any
---@field by_continent fun(map: table<string, any>, default?: any): fun(txn: moxy.Txn): any

---@class moxy
---@field geo moxy.geo
