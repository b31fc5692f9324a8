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
---@field host string|nil
---@field scheme string
---@field http_version string        "1.1" or "1.0"
---@field headers moxy.Headers

---@class moxy.Response
---@field status integer|nil         settable in on_response
---@field headers moxy.Headers

---@class moxy.Client
---@field ip string
---@field port integer

---@class moxy.Upstream
---@field pool string|nil            the pool picked so far
local Upstream = {}

---Send the request to the pool called `pool` (raises if there is none).
---@param pool string
function Upstream:pick(pool) end

---@class moxy.Txn
---@field req moxy.Request
---@field resp moxy.Response
---@field client moxy.Client
---@field upstream moxy.Upstream
---@field ctx table                  yours, from on_request to on_response
---@field id string                  the request id
---@field listener string            the listener's name
---@field error string|nil           in on_error: why the request failed
local Txn = {}

---Answer the request now; later hooks of the phase are skipped.
---@param status integer
---@param body? string
---@param headers? table<string, string|string[]>
function Txn:respond(status, body, headers) end

---Answer with a redirect (301, 302 (default), 303, 307 or 308).
---@param url string
---@param status? integer
function Txn:redirect(url, status) end

---@class moxy.Hooks
---@field init? fun()
---@field worker_init? fun()
---@field on_request? fun(txn: moxy.Txn)
---@field on_response? fun(txn: moxy.Txn)
---@field on_error? fun(txn: moxy.Txn)

---@class moxy.Log
---@field err fun(...: any)
---@field warn fun(...: any)
---@field info fun(...: any)
---@field debug fun(...: any)

---@class moxy
---@field version string
---@field log moxy.Log
moxy = {}

---Park the running hook for `seconds` without blocking the worker.
---@param seconds number
function moxy.sleep(seconds) end

return moxy
