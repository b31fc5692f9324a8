-- moxy.waf_rules: moxy.waf's default rule set, as data.  Written for moxy
-- from the attack classes of the OWASP Web Security Testing Guide and the
-- CWE entries named below; it is a programmable filter for the obvious
-- probes, not an OWASP Core Rule Set engine.  Reference: docs/waf.md
-- ("The default rules"), which lists every id.
--
-- M.build(opts) -> a new list of rules, parameterised by opts.limits
-- ({ args, arg_name, arg_length }) and opts.methods (the allowed methods).
-- Scores: 5 alone reaches the default threshold (a sure sign); 3 needs
-- another sign in the same request.
local M = {}

-- Where injections travel: every argument (query, form and JSON bodies),
-- their names, cookies, and the two request fields that applications
-- commonly store or echo.
local INPUTS = { "args", "args_names", "cookies" }
-- The same and the two request fields applications commonly store or echo:
-- their injections must break out of a string (a quote) or into markup.
local INPUTS_HEADERS = { "args", "args_names", "cookies", "header:User-Agent", "header:Referer" }
-- And the path: markup and script have no business in a path.
local INPUTS_PATH = { "path", "args", "args_names", "cookies", "header:User-Agent", "header:Referer" }

-- `chars`: a rule can only match a value holding at least one of these
-- characters; `needs`: ... one of these texts, in any case (moxy.waf skips
-- it for the others without running it).
local Q, WS = "'\"`", " \t\n\r\v\f"

-- Arguments whose value names a file, a page or a template: a remote URL
-- there is a file inclusion (CWE-98), not a link.
local FILE_ARGS = {}
for _, n in ipairs({ "page", "file", "filename", "include", "inc", "template", "tpl", "module", "mod", "lang",
                     "language", "dir", "doc", "document", "folder", "root", "conf", "config", "theme", "skin",
                     "layout", "view", "load", "read", "show", "style", "path", "pg", "content", "site" }) do
  FILE_ARGS[#FILE_ARGS + 1] = "args:" .. n
end
FILE_ARGS[#FILE_ARGS + 1] = "cookie:theme"
FILE_ARGS[#FILE_ARGS + 1] = "cookie:lang"
FILE_ARGS[#FILE_ARGS + 1] = "cookie:template"

-- Arguments that name a JavaScript function (JSONP).
local CALLBACK_ARGS = { "args:callback", "args:jsonp", "args:cb", "args:jsonpcallback" }

-- Shell command names an injection runs (CWE-78).
local CMDS = [[(?:cat|tac|ls|id|whoami|uname|hostname|wget|curl|fetch|nc|ncat|netcat|socat|telnet|tftp|bash|sh|zsh|ksh|dash|csh|python[23]?|perl|ruby|php|lua|node|nslookup|dig|ping|sleep|chmod|chown|rm|cp|mv|touch|echo|printf|base64|xxd|ifconfig|ipconfig|systeminfo|ps|kill|env|printenv|head|tail|more|less|find|xargs|awk|sed|dd|mkfifo|busybox|crontab|useradd|passwd|powershell|cmd|certutil|bitsadmin|whoami\.exe|net)]]

function M.build(opts)
  local limits, methods = opts.limits, opts.methods
  local rules = {
    -- 100: the request line and protocol-level abuse -------------------------
    { id = 100, tag = "method", msg = "method not allowed", score = 5,
      targets = { "method" }, op = "exact", value = methods, negate = true },
    { id = 110, tag = "protocol", msg = "NUL byte in the path, an argument or a cookie", score = 5,
      targets = { "path", "args", "args_names", "cookies" }, transforms = { "url_decode" },
      op = "contains", value = "\0" },
    { id = 111, tag = "protocol", msg = "CR or LF in the path", score = 5, chars = "\r\n",
      targets = { "path" }, transforms = { "url_decode", "url_decode" }, op = "regex", value = "[\r\n]" },
    -- header injection / response splitting through an argument (CWE-113)
    { id = 112, tag = "protocol", msg = "a header line injected through an argument", score = 5, chars = "\r\n",
      targets = { "args", "cookies" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[[\r\n]\s*(?:(?:set-cookie|location|content-(?:type|length)|refresh|transfer-encoding|host|x-[a-z0-9-]+)\s*:|(?:bcc|cc|to|from|reply-to)\s*:\s*[^\s@]+@[^\s@]+)]] },
    { id = 113, tag = "protocol", msg = "characters whose low bytes are CR LF before a header name", score = 5, chars = "\128",
      targets = { "path", "args", "cookies" }, transforms = { "url_decode" }, op = "regex",
      value = [[(?:\xe5\x98[\x8a\x8d])+\s*[\w-]+\s*:]] },

    -- 200: sizes and counts (CWE-770) ---------------------------------------
    { id = 200, tag = "limits", msg = "too many arguments", score = 5,
      targets = { "args" }, op = "count", gt = limits.args },
    { id = 201, tag = "limits", msg = "argument name too long", score = 5,
      targets = { "args_names" }, op = "size", gt = limits.arg_name },
    { id = 202, tag = "limits", msg = "argument value too long", score = 5,
      targets = { "args" }, op = "size", gt = limits.arg_length },
    { id = 203, tag = "limits", msg = "cookie value too long", score = 5,
      targets = { "cookies" }, op = "size", gt = limits.arg_length },
    { id = 204, tag = "protocol", msg = "a body of an inspected type that does not parse", score = 5,
      targets = { "body_error" }, op = "size", gt = 0 },

    -- 300: path traversal and local files (CWE-22, CWE-98) ------------------
    { id = 300, tag = "traversal", msg = "path traversal (../ or ..\\)", score = 5, chars = ".",
      needs = { ".." },
      targets = { "path", "args", "args_names", "cookies", "header:Referer" }, transforms = { "url_decode", "url_decode" },
      op = "regex", value = [[(?:^|[\\/])\.\.+(?:;[^\\/]*)?(?:[\\/]|$)]] },
    { id = 301, tag = "traversal", msg = "encoded dot-dot-slash left after decoding", score = 5, chars = ".%",
      needs = { "..", "%" },
      targets = { "path", "args", "args_names", "cookies" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[(?:\.|%2e|%u002e|%c0%ae|%e0%80%ae){2}(?:/|\\|%2f|%5c|%u2215|%c0%af|%c1%9c)]] },
    { id = 310, tag = "lfi", msg = "a system file named", score = 5, chars = "/.",
      needs = { "/", "boot.ini", ".ht", "web.config", "wp-config", "id_rsa", ".bash_history" },
      targets = { "path", "args", "args_names", "cookies" }, transforms = { "url_decode", "url_decode", "normalize_path" },
      op = "regex", flags = "i",
      value = [[(?:^|/)(?:etc/(?:passwd|shadow|group|hosts|issue|sudoers|crontab)|proc/(?:self|\d+)/(?:environ|cmdline|maps|mem|fd|status)|var/log/|windows/(?:win\.ini|system\.ini|system32/)|boot\.ini|web-inf/|meta-inf/|(?:\.ht(?:passwd|access)|web\.config|wp-config\.php|id_rsa|\.bash_history)(?:$|[?;~#]|\.(?:bak|old|orig|save|swp|txt)$))]] },
    { id = 311, tag = "lfi", msg = "a repository or environment file asked for", score = 5, chars = "/",
      targets = { "path" }, transforms = { "url_decode", "normalize_path" }, op = "regex", flags = "i",
      value = [[/(?:\.(?:git|svn|hg|bzr)(?:/|$)|\.env(?:\.[\w-]+)?$|\.ds_store$)]] },
    { id = 312, tag = "lfi", msg = "a backup or database file asked for", score = 3, chars = "/",
      targets = { "path" }, transforms = { "url_decode", "normalize_path" }, op = "regex", flags = "i",
      value = [[/[^/]+(?:\.(?:bak|old|orig|swp|sql|sqlite)|~)$]] },

    -- 400: file inclusion and code injection (CWE-98, CWE-94, CWE-917) ------
    { id = 400, tag = "rfi", msg = "a stream wrapper or script URL scheme in an argument", score = 5, chars = ":\\",
      needs = { "://", "\\\\" },
      targets = { "args", "cookies" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[(?:^|[\s'"(=])(?:php|phar|zip|zlib|compress\.zlib|expect|glob|gopher|dict|jar|file|data)://|^\s*\\\\[\w.$-]+\\[\w.$-]+]] },
    { id = 401, tag = "rfi", msg = "a URL to a bare IP address or cloud metadata in an argument", score = 5, chars = ":",
      needs = { "://" },
      targets = { "args" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[^(?:https?|ftps?)://(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\]|metadata\.google\.internal)(?::\d+)?(?:/|$)]] },
    { id = 402, tag = "rfi", msg = "a remote URL ending in ? or a NUL (inclusion trick)", score = 5, chars = ":",
      needs = { "://" },
      targets = { "args", "cookies" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[^(?:https?|ftps?)://[^\s]+(?:\?|\x00)$]] },
    { id = 403, tag = "rfi", msg = "a remote URL in an argument that names a file, page or template", score = 5, chars = "/",
      needs = { "//" },
      targets = FILE_ARGS, transforms = { "url_decode", "trim" }, op = "regex", flags = "i",
      value = [[^(?:(?:https?|ftps?|smb|webdav)://|//[\w.-]+/)]] },
    { id = 410, tag = "code", msg = "JNDI / lookup expression (Log4Shell-style)", score = 5, chars = "$",
      needs = { "${" },
      targets = { "path", "args", "args_names", "cookies", "headers" }, transforms = { "url_decode", "url_decode" },
      op = "regex", flags = "i",
      value = [[\$\{\s*(?:(?:jndi|lower|upper|env|sys|java|date|main|ctx|k8s|docker|bundle|spring|base64|web|log4j|marker|sd|map|event)\s*:|::-|\$\{)]] },
    { id = 411, tag = "code", msg = "PHP code", score = 5, chars = "<(",
      needs = { "<?", "phpinfo", "passthru", "shell_exec", "proc_open", "popen", "pcntl_exec", "eval", "assert", "system" },
      targets = { "args", "cookies", "header:User-Agent" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[<\?(?:php\b|=)|\b(?:phpinfo|passthru|shell_exec|proc_open|popen|pcntl_exec)\s*\(|\b(?:eval|assert|system)\s*\(\s*(?:\$_|base64_decode|gzinflate|str_rot13|['"]|\$\w)]] },
    { id = 412, tag = "code", msg = "template expression evaluation", score = 5, chars = "{<",
      needs = { "{{", "${", "#{", "<%" },
      targets = { "args", "cookies" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[\{\{\s*(?:\d+\s*[*+/-]\s*\d+|[^}]*(?:__class__|__globals__|__builtins__|__import__|__proto__|config\.items|self\.|request\.application|lipsum|cycler|joiner|constructor|\$eval|\$on\b))|\$\{\s*\d+\s*[*+]\s*\d+\s*\}|#\{\s*\d+\s*[*+]\s*\d+\s*\}|<%=?\s*\d+\s*[*+]\s*\d+\s*%>]] },

    { id = 413, tag = "code", msg = "Java runtime, reflection or OGNL/EL/FreeMarker execution", score = 5, chars = ".(#$@",
      needs = { "java", "getruntime", "freemarker", "processbuilder", "#", "xwork", "$" },
      targets = { "args", "args_names", "cookies", "header:Content-Type" }, transforms = { "url_decode", "url_decode" }, op = "regex", flags = "i",
      value = [[\bjava\.lang\.(?:Runtime|ProcessBuilder|System|Class|reflect)\b|@java\.lang\.|\bgetRuntime\s*\(|\bfreemarker\.template\.utility\.(?:Execute|ObjectConstructor|JythonRuntime)|\bnew\s+java\.|\bProcessBuilder\s*\(|#_?memberAccess|#context\s*\[|\bxwork\.MethodAccessor|\bT\s*\(\s*java\.|\$\{\s*(?:T\s*\(|#|@|new\s)]] },
    { id = 414, tag = "code", msg = "class loader manipulation through an argument name", score = 5, chars = ".[",
      needs = { "class" },
      targets = { "args_names", "cookie_names" }, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[(?:^|[.\[])class(?:\.module)?\.classloader\b|^class\[|\bclassloader\.|\.protectiondomain\.]] },
    { id = 415, tag = "code", msg = "Node.js process or module access", score = 5, chars = "(_.",
      needs = { "require", "child_process", "process.", "sync" },
      targets = INPUTS, transforms = { "url_decode" }, op = "regex",
      value = [[\brequire\s*\(\s*['"`](?:child_process|fs|net|vm|os|process)['"`]\s*\)|\bchild_process\b|\bprocess\.(?:mainModule|binding|dlopen)\b|\b(?:execSync|spawnSync|execFileSync)\s*\(]] },

    -- 500: SQL injection (CWE-89) -------------------------------------------
    { id = 500, tag = "sqli", msg = "UNION SELECT", score = 5, chars = WS .. "(",
      needs = { "union" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[\bunion\b[\s(]*(?:all|distinct)?[\s(]*select\b]] },
    { id = 501, tag = "sqli", msg = "a quote closed, then OR/AND and a comparison (tautology)", score = 5, chars = Q,
      needs = { "or", "and", "xor", "||", "&&" },
      targets = INPUTS_HEADERS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[['"`]\s*\)*\s*(?:or|and|xor|\|\||&&)\s*[\s(]*(?:['"`]?[\w.-]*['"`]?\s*(?:=|<=?>?|>=?|!=|\blike\b|\bis\b|\bin\b\s*\(|\brlike\b|\bregexp\b|\bbetween\b)|\d+\s*(?:$|--|#|;)|\b(?:true|false|exists|sleep|benchmark|pg_sleep)\b)]] },
    { id = 502, tag = "sqli", msg = "a value that ends, then OR/AND and a comparison", score = 5, chars = WS .. ")" .. Q,
      needs = { "or", "and", "xor", "||", "&&" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[^\(?[\w.@-]*['"`)]*(?:\s+|(?<=[)'"`]))(?:or|and|xor|\|\||&&)(?:\s+|(?=[('"`]))[(]*(?:\d+|'[^']*'?|"[^"]*"?)\)*\s*(?:=|<>|!=|>=|<=|<|>|\blike\b|\bis\b|\brlike\b|\bregexp\b)\s*[(]*(?:\d+|'[^']*|"[^"]*)\s*\)*\s*(?:$|--|#|;|\))]] },
    { id = 503, tag = "sqli", msg = "stacked query", score = 5, chars = ";",
      needs = { "drop", "truncate", "delete", "insert", "update", "alter", "create", "exec", "declare", "shutdown", "grant", "select", "waitfor" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[;\s*(?:drop\s+(?:table|database|schema|view|index|user|procedure)|truncate\s+table|delete\s+from|insert\s+into|update\s+\w+\s+set|alter\s+(?:table|user|database)|create\s+(?:table|user|database|procedure|function)|exec(?:ute)?\s*(?:\(|xp_|sp_|master\.|@)|declare\s+@|shutdown\b|grant\s+\w|select\s+[\w*@(]|waitfor\s+delay)]] },
    { id = 504, tag = "sqli", msg = "SQL function an injection uses", score = 5, chars = WS .. "(@",
      needs = { "sleep", "benchmark", "extractvalue", "updatexml", "load_file", "group_concat", "concat_ws", "randomblob", "make_set", "elt", "utl_inaddr", "dbms_pipe", "sys_eval", "xp_cmdshell", "sp_executesql", "sp_oacreate", "char", "chr", "waitfor", "@@", "into" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[\b(?:(?:sleep|pg_sleep|benchmark)\s*\(\s*[\d'"(]|(?:extractvalue|updatexml|load_file|group_concat|concat_ws|randomblob|make_set|elt|utl_inaddr\.get_host_address|dbms_pipe\.receive_message|sys_eval|xp_cmdshell|sp_executesql|sp_oacreate|char|chr|nchar)\s*\(\s*[\d'"(@]|waitfor\s+(?:delay|time)\s+['"\d]|@@(?:version|datadir|hostname)\b|into\s+(?:out|dump)file\b)]] },
    { id = 512, tag = "sqli", msg = "a database catalog read", score = 5, chars = WS .. ".",
      needs = { "from", "information_schema", "pg_catalog", "sqlite_master", "sysobjects", "mysql" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[\bfrom\s+(?:information_schema|mysql\.user|sysobjects|syscolumns|pg_catalog|pg_shadow|sqlite_master|all_tables|user_tables)\b|\b(?:information_schema|pg_catalog|sqlite_master|sysobjects|mysql)\s*\.\s*\w]] },
    { id = 505, tag = "sqli", msg = "a subquery SELECT after a quote or parenthesis", score = 5, chars = Q .. "()",
      needs = { "select" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[(?:['"`)]\s*(?:;|\)|\bor\b|\band\b|\bunion\b|\|\||=|\+|-)?|(?:=|<|>|,|\bor\b|\band\b|\bin\b|\bexists\b|\bnot\b|\(|\b(?:ascii|substring|substr|mid|length|ord|hex|if|ifnull|coalesce|cast|count|char_length)\s*)\s*\()\s*\(?\s*select\s+(?:[\w*@(`'"]|\d)[\s\S]{0,120}?\bfrom\b]] },
    { id = 506, tag = "sqli", msg = "ORDER BY / GROUP BY / HAVING probe after a quote or ending in a comment", score = 5, chars = Q .. ")-#;",
      needs = { "order", "group", "having" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[['"`)]\s*(?:order|group)\s+by\s+\d|\b(?:order|group)\s+by\s+\d+\s*(?:--|#|;)|['"`)]\s*having\s+\d]] },
    { id = 507, tag = "sqli", msg = "MySQL versioned comment", score = 5, chars = "*",
      targets = INPUTS, transforms = { "url_decode" }, op = "regex", value = [[/\*!\d*]] },
    { id = 508, tag = "sqli", msg = "the value's first quote closed and the rest commented out", score = 5, chars = Q,
      targets = INPUTS_HEADERS, transforms = { "url_decode" }, op = "regex",
      value = [[^[^'"`]*['"`]\s*\)*\s*(?:;\s*)?(?:--(?:\s|$|-)|#|/\*)]] },
    { id = 510, tag = "sqli", msg = "a quote closed and the rest commented out", score = 3, chars = Q,
      targets = INPUTS_HEADERS, transforms = { "url_decode" }, op = "regex",
      value = [[['"`]\s*\)*\s*(?:;\s*)?(?:--(?:\s|$|-)|#|/\*)]] },
    { id = 511, tag = "sqli", msg = "CASE WHEN ... THEN ... END", score = 5, chars = WS,
      needs = { "case" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[\bcase\s+when\b[\s\S]{1,200}?\bthen\b[\s\S]{1,200}?\bend\b]] },
    { id = 509, tag = "sqli", msg = "OR/AND with equal numbers", score = 5, chars = WS .. "(",
      needs = { "or", "and", "xor", "||", "&&" },
      targets = INPUTS, transforms = { "url_decode", "remove_comments", "compress_whitespace" }, op = "regex", flags = "i",
      value = [[\b(?:or|and|xor|\|\||&&)(?:\s+|\s*(?=\())\(?\s*(\d+)\s*\)?\s*(?:=|<=|>=|like)\s*\(?\s*\1\b]] },

    -- 600: cross-site scripting (CWE-79) ------------------------------------
    { id = 600, tag = "xss", msg = "script tag", score = 5, chars = "<",
      needs = { "script" },
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[<\s*/?\s*script\b]] },
    { id = 601, tag = "xss", msg = "an event handler in a tag or after a closed attribute", score = 5, chars = "<" .. Q,
      needs = { "on" },
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [=[<[a-z!/?][^>]*?[\s/"'`]on[a-z]{3,}\s*=|['"`][\s/]*on[a-z]{3,}\s*=\s*['"`]?[\w.$]+\s*[(`=]]=] },
    { id = 602, tag = "xss", msg = "a script URL", score = 5, chars = ":",
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[(?:j\s*a\s*v\s*a|v\s*b|l\s*i\s*v\s*e)\s*s\s*c\s*r\s*i\s*p\s*t\s*:\s*\S*?[(`=]|\bdata\s*:\s*(?:text/html|image/svg\+xml|application/(?:x-)?(?:java|ecma)script|text/javascript)]] },
    { id = 603, tag = "xss", msg = "an active HTML element", score = 5, chars = "<",
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[<\s*(?:iframe|frame|frameset|object|embed|applet|base|meta|svg|math|isindex|xss|import|portal)\b]] },
    { id = 604, tag = "xss", msg = "a script sink or dialog call", score = 3, chars = ".=(`",
      needs = { "document", "window", "html", "alert", "prompt", "confirm", "eval", "fromcharcode", "settimeout", "setinterval", "atob", "constructor" },
      targets = INPUTS, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[\b(?:document\s*\.\s*(?:cookie|write|domain|location)|window\s*\.\s*location|(?:inner|outer)html\s*=|(?:alert|prompt|confirm|eval|fromcharcode|settimeout|setinterval|atob)\s*(?:\(|`)|constructor\s*\()]] },
    { id = 606, tag = "xss", msg = "a dialog call on a DOM value or literal", score = 5, chars = "(`",
      needs = { "alert", "prompt", "confirm" },
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[\b(?:alert|prompt|confirm)\s*(?:\(|`)\s*(?:document\.|window\.|self\.|top\.|this\.|location\b|origin\b|\d+\s*[)`]|['"`])]] },
    { id = 607, tag = "xss", msg = "a JSONP callback that is not a function name", score = 5,
      targets = CALLBACK_ARGS, op = "regex", value = [=[[^\w.$\[\]]]=] },
    { id = 605, tag = "xss", msg = "an element with an inline style expression or a src/href to a script", score = 5, chars = "<",
      targets = INPUTS_PATH, transforms = { "url_decode", "html_decode", "remove_nulls" }, op = "regex", flags = "i",
      value = [[<[a-z][^>]*\b(?:style\s*=[^>]*expression\s*\(|(?:src|href|action|formaction|xlink:href)\s*=\s*['"]?\s*(?:javascript|vbscript|data)\s*:)]] },

    -- 700: shell command injection (CWE-78) ---------------------------------
    { id = 700, tag = "shell", msg = "a command after a shell separator", score = 5, chars = ";&|`\n$",
      targets = INPUTS, transforms = { "url_decode", "cmd_line" }, op = "regex", flags = "i",
      value = [[(?:[;&|`\n]|\$\()\s*(?:[\w./-]*/)?]] .. CMDS ..
        [[(?:\.exe)?(?:\s*$|\s*[;&|`)<>]|\s+(?:-|/|\.|\$|~|\\|https?:|ftp:|\d+\.\d+|\d+\s*$|[\w.-]+\.[a-z]{2,}/|\w+\s*[|;&>])|\s*\$\{?ifs)]] },
    { id = 701, tag = "shell", msg = "command substitution", score = 5, chars = "$`",
      targets = INPUTS, transforms = { "url_decode", "cmd_line" }, op = "regex", flags = "i",
      value = [[\$\(\s*(?:[\w./-]*/)?]] .. CMDS .. [[\b|`\s*(?:[\w./-]*/)?]] .. CMDS .. [[\b[^`]*`]] },
    { id = 702, tag = "shell", msg = "shell evasion: $IFS or brace expansion", score = 5, chars = "${",
      targets = INPUTS, transforms = { "url_decode" }, op = "regex", flags = "i",
      value = [[\$\{?ifs\b|\{\s*]] .. CMDS .. [[\s*,[^}]*\}]] },
    { id = 704, tag = "shell", msg = "a command path written with glob wildcards", score = 5, chars = ";&|`\n$",
      targets = INPUTS, transforms = { "url_decode", "cmd_line" }, op = "regex", flags = "i",
      value = [[(?:[;&|`\n]|\$\()\s*/(?:[\w]*[?*][\w?*]*/)+[\w?*]*]] },
    { id = 703, tag = "shell", msg = "a shell, reverse shell or download-and-run", score = 5, chars = WS .. "/|",
      needs = { "/dev/", "/bin/", "bash", "nc", "mkfifo", "curl", "wget", "cmd", "powershell" },
      targets = INPUTS, transforms = { "url_decode", "cmd_line" }, op = "regex", flags = "i",
      value = [[/dev/(?:tcp|udp)/|/bin/(?:ba|z|k|da)?sh\b|\bbash\s+-[ic]\b|\bnc(?:at)?\s+(?:-\w*e\b|[\w.-]+\s+\d+\s+-\w*e\b)|\bmkfifo\s|\b(?:curl|wget)\s+[^|;]*\|\s*(?:ba)?sh\b|\bcmd(?:\.exe)?\s*/[ck]\b|\bpowershell(?:\.exe)?\s+-(?:e|enc|encodedcommand|nop|noprofile|w|windowstyle|c|command|exec)\b]] },

    { id = 705, tag = "shell", msg = "a function definition in a header (Shellshock)", score = 5, chars = "(",
      targets = { "headers" }, op = "regex", value = [[^\s*\(\s*\)\s*\{]] },

    -- 800: scanners (CAPEC-169) ---------------------------------------------
    { id = 800, tag = "scanner", msg = "a known scanner's User-Agent", score = 5,
      targets = { "header:User-Agent" }, op = "regex", flags = "i",
      value = [[\b(?:sqlmap|nikto|nmap|masscan|zgrab|nuclei|wpscan|gobuster|dirbuster|dirb|acunetix|nessus|openvas|w3af|arachni|havij|netsparker|appscan|webinspect|commix|fimap|jaeles|ffuf|feroxbuster|wfuzz|xsser|whatweb|skipfish|paros|zaproxy|qualys|morfeus|jorgee|zmeu|sqlninja|nstealth|webshag|wapiti|golismero|bbqsql|jbrofuzz|metasploit|dotdotpwn|fuzz faster u fool)\b]] },
    { id = 801, tag = "scanner", msg = "a scanner's own request header", score = 5,
      targets = { "header_names" }, op = "regex", flags = "i",
      value = [[^(?:acunetix-|x-scanner$|x-wipp$|x-request-memo$|x-scan-memo$|x-arachni-|bbqsql$|x-wapiti)]] },
  }
  table.sort(rules, function(a, b) return a.id < b.id end)
  return rules
end

return M