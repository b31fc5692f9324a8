-- spec/support/waf/normal.lua -- ordinary traffic moxy.waf must NOT block:
-- the false-positive corpus the WAF spec replays.
--
-- What it is: a list of HTTP/1.1 requests in the same shape as attacks.lua
-- (id, class, note, method, target, headers, body).  Every one is what a
-- real browser, app, API client, crawler or webhook sender sends to a real
-- site, chosen to be the kind of thing that trips naive WAF rules: SQL and
-- shell words in prose, quotes and apostrophes in names, angle brackets,
-- pipes, ampersands and percent signs in search boxes, URLs inside
-- arguments, base64 with + / =, JWTs, tracker cookies, GraphQL braces and
-- parentheses, markdown with backticks, CR LF in textareas, long values and
-- many arguments.  What a reasonable WAF rightly blocks is kept out: no
-- "../" sequences, no <script>/event-handler markup, no quoted SQL
-- tautologies, no shell metacharacter-plus-command chains, no "${jndi:".
--
-- class: page, asset, search, api-read, api-write, form, auth, webhook,
-- graphql, http (HEAD/OPTIONS/conditional/range), client (non-browser
-- user agents), long.
--
-- Sources: the API requests are shaped after the public API documentation
-- of GitHub's REST and GraphQL APIs, Stripe's API and webhook docs, the
-- JSON:API specification (sparse fieldsets, include, page[...], filter[...]),
-- OData v4 URL conventions ($filter/$select/$orderby as used by Microsoft
-- Graph), PostgREST, Hasura, the GraphQL over HTTP specification, RFC 6749
-- and RFC 7636 (OAuth 2.0 authorization code + PKCE), OpenID Connect Core,
-- the SAML 2.0 HTTP-POST binding, RFC 6902 (JSON Patch), RFC 7396 (JSON
-- Merge Patch), RFC 9110 (conditional and range requests, HEAD, OPTIONS),
-- the Fetch standard (CORS preflight), the W3C CSP reporting format, the
-- Google Analytics 4 measurement protocol, and the webhook docs of Slack,
-- Twilio, Shopify, SendGrid and Mailgun.  Browser header sets are those
-- current Chrome 124, Edge 124, Firefox 125 and Safari 17 send (desktop and
-- mobile); bot and client User-Agents are the ones those clients publish.
-- Search phrases, form texts, names and JSON contents were written for
-- moxy.  Hosts are documentation names (example.com/.net/.org) and
-- documentation addresses; tokens and signatures are made up (the JWTs and
-- the SAML response are well-formed base64 of made-up content).
--
-- How it was written: by hand, for moxy.  Readable payloads go through u()
-- (encodeURIComponent-style, space -> %20, UTF-8 percent-encoded) or f()
-- (form encoding, space -> '+'), which produce exactly the bytes a browser
-- or HTTP library sends; targets whose encoding matters are written literally.

local function enc(s, keep)
    return (s:gsub("[^%w%-%._~" .. (keep or "") .. "]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end
local function u(s) return enc(s) end
local function f(s) return (enc(s, " "):gsub(" ", "+")) end
local function with(base, extra)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
end

local FORM = "application/x-www-form-urlencoded"
local JSON = "application/json"

-- browser identities ------------------------------------------------------
local UA_CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
local UA_EDGE = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0"
local UA_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
local UA_FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
local UA_SAFARI = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15"
local UA_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
local UA_ANDROID = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
local ACCEPT_CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
local ACCEPT_FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
local ACCEPT_SAFARI = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

local CHROME_NAV = {
    ["User-Agent"] = UA_CHROME, Accept = ACCEPT_CHROME,
    ["Accept-Language"] = "en-US,en;q=0.9", ["Accept-Encoding"] = "gzip, deflate, br, zstd",
    ["Sec-Ch-Ua"] = [["Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"]],
    ["Sec-Ch-Ua-Mobile"] = "?0", ["Sec-Ch-Ua-Platform"] = [["Windows"]],
    ["Sec-Fetch-Dest"] = "document", ["Sec-Fetch-Mode"] = "navigate",
    ["Sec-Fetch-Site"] = "none", ["Sec-Fetch-User"] = "?1", ["Upgrade-Insecure-Requests"] = "1",
}
local EDGE_NAV = with(CHROME_NAV, {
    ["User-Agent"] = UA_EDGE, ["Accept-Language"] = "en-GB,en;q=0.9,en-US;q=0.8,de;q=0.7",
    ["Sec-Ch-Ua"] = [["Chromium";v="124", "Microsoft Edge";v="124", "Not-A.Brand";v="99"]],
})
local FIREFOX_NAV = {
    ["User-Agent"] = UA_FIREFOX, Accept = ACCEPT_FIREFOX,
    ["Accept-Language"] = "en-US,en;q=0.5", ["Accept-Encoding"] = "gzip, deflate, br",
    ["Upgrade-Insecure-Requests"] = "1", ["Sec-Fetch-Dest"] = "document",
    ["Sec-Fetch-Mode"] = "navigate", ["Sec-Fetch-Site"] = "cross-site", ["Sec-Fetch-User"] = "?1",
    DNT = "1", TE = "trailers",
}
local SAFARI_NAV = {
    ["User-Agent"] = UA_SAFARI, Accept = ACCEPT_SAFARI,
    ["Accept-Language"] = "fr-FR,fr;q=0.9", ["Accept-Encoding"] = "gzip, deflate, br",
}
local IPHONE_NAV = with(SAFARI_NAV, { ["User-Agent"] = UA_IPHONE, ["Accept-Language"] = "en-AU,en;q=0.9" })
local ANDROID_NAV = with(CHROME_NAV, {
    ["User-Agent"] = UA_ANDROID, ["Sec-Ch-Ua-Mobile"] = "?1", ["Sec-Ch-Ua-Platform"] = [["Android"]],
    ["Accept-Language"] = "pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7",
})
local function chrome(extra) return with(CHROME_NAV, extra) end
local function edge(extra) return with(EDGE_NAV, extra) end
local function firefox(extra) return with(FIREFOX_NAV, extra) end
local function safari(extra) return with(SAFARI_NAV, extra) end
local function iphone(extra) return with(IPHONE_NAV, extra) end
local function android(extra) return with(ANDROID_NAV, extra) end

-- a page's own fetch()/XHR to its API
local ORIGIN = "https://shop.example.com"
local function xhr(extra)
    return with({
        ["User-Agent"] = UA_CHROME, Accept = "application/json, text/plain, */*",
        ["Accept-Language"] = "en-US,en;q=0.9", ["Accept-Encoding"] = "gzip, deflate, br, zstd",
        Origin = ORIGIN, Referer = ORIGIN .. "/account/orders?page=2",
        ["Sec-Fetch-Dest"] = "empty", ["Sec-Fetch-Mode"] = "cors", ["Sec-Fetch-Site"] = "same-site",
        ["X-Requested-With"] = "XMLHttpRequest",
    }, extra)
end
-- a static subresource of a page
local function asset(dest, accept, extra)
    return with({
        ["User-Agent"] = UA_CHROME, Accept = accept, ["Accept-Language"] = "en-US,en;q=0.9",
        ["Accept-Encoding"] = "gzip, deflate, br, zstd", Referer = ORIGIN .. "/products/summer-linen-shirt?color=blue&size=M",
        ["Sec-Fetch-Dest"] = dest, ["Sec-Fetch-Mode"] = dest == "font" and "cors" or "no-cors",
        ["Sec-Fetch-Site"] = "same-origin",
    }, extra)
end

-- cookies and tokens ---------------------------------------------------------
local GA = "_ga=GA1.2.1843720592.1712312345; _gid=GA1.2.630091542.1712398765; _ga_7XK2QW9HNM=GS1.1.1712398765.4.1.1712399012.0.0.0"
local JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyXzhmM2EyYyIsIm5hbWUiOiJKYW5lIE8nQnJpZW4iLCJpYXQiOjE3MTIzOTg3NjUsImV4cCI6MTcxMjQwMjM2NSwic2NvcGUiOiJyZWFkOm9yZGVycyB3cml0ZTpvcmRlcnMifQ.RmaHUcdzV1r-5_sskU7YQBb2zpcy3GVrRNcBTY0NWnU"
local ID_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjFlOWdkazciLCJ0eXAiOiJKV1QifQ.eyJpc3MiOiJodHRwczovL2FjY291bnRzLmV4YW1wbGUuY29tIiwiYXVkIjoiYXBwLTQyIiwic3ViIjoiMTA3NjkxNTAzNTAwMDYxNTA3MTUxMTMwODIzNjciLCJlbWFpbCI6ImphbmUuZG9lQGV4YW1wbGUuY29tIiwiZW1haWxfdmVyaWZpZWQiOnRydWUsIm5vbmNlIjoibi0wUzZfV3pBMk1qIiwiaWF0IjoxNzEyMzk4NzY1LCJleHAiOjE3MTI0MDIzNjV9.pKvURIxJVi2CgRXROh_M6pJ_UrTVRZKX-LQ-QtqJI4vBNibkPcs43bCCSIkn7JBPtCBXRDmD6IWFF51QVRr-YhIbR3SnWZJKKSnEpBL7bjG5qqdGRmhA78xKdtaalBSeI2TjmD1kb-r6obUReF5cnpCu3DDaamvq1VIOzJnGYmo"
local SESSION = "sessionid=3f9a1c0e7b2d4e6f8a9b0c1d2e3f4a5b; csrftoken=Zx8yQ2vLk9PwT4mN7bR1cS6dF3gH0jKa"
local ONETRUST = "OptanonConsent=isGpcEnabled=0&datestamp=Mon+Apr+08+2024+10%3A15%3A00+GMT%2B0200+(Central+European+Summer+Time)&version=202401.1.0&browserGpcFlag=0&isIABGlobal=false&hosts=&consentId=8099ffd8-5f39-415b-ba66-aee1a7110cf7&interactionCount=1&landingPath=NotLandingPage&groups=C0001%3A1%2CC0002%3A1%2CC0003%3A0%2CC0004%3A0; OptanonAlertBoxClosed=2024-04-08T08:15:02.114Z"
local PREFS_B64 = "prefs=eyJ0aGVtZSI6ICJkYXJrIiwgImxhbmciOiAiZnItQ0EiLCAidHoiOiAiQW1lcmljYS9Nb250cmVhbCJ9; remember_token=r4xCNNyP1344croWjaMBvjBVLwbXbg2mGUr4QEljNyWwy9QYfBXg+g=="
local WP_COOKIE = "wordpress_logged_in_5c0e8f2d9a1b=jane%7C1712571565%7CkQ3xVh9TzPm2LwYc8RbNf4GjUe7DsA1o6iKyHq0tZnB%7C5f2e9c1a7b3d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f; wp-settings-1=libraryContent%3Dbrowse%26editor%3Dtinymce%26posts_list_mode%3Dlist; wp-settings-time-1=1712398765"
local SAML_RESPONSE = "PHNhbWxwOlJlc3BvbnNlIHhtbG5zOnNhbWxwPSJ1cm46b2FzaXM6bmFtZXM6dGM6U0FNTDoyLjA6cHJvdG9jb2wiIHhtbG5zOnNhbWw9InVybjpvYXNpczpuYW1lczp0YzpTQU1MOjIuMDphc3NlcnRpb24iIElEPSJfOGU4ZGM1ZjY5YTk4Y2M0YzFmZjM0MjdlNWNlMzQ2MDZmZDY3MmY5MWU2IiBWZXJzaW9uPSIyLjAiIElzc3VlSW5zdGFudD0iMjAyNC0wNC0wOFQxMDoxNTowMFoiIERlc3RpbmF0aW9uPSJodHRwczovL2FwcC5leGFtcGxlLmNvbS9zYW1sL2FjcyI+PHNhbWw6SXNzdWVyPmh0dHBzOi8vaWRwLmV4YW1wbGUub3JnL21ldGFkYXRhPC9zYW1sOklzc3Vlcj48c2FtbHA6U3RhdHVzPjxzYW1scDpTdGF0dXNDb2RlIFZhbHVlPSJ1cm46b2FzaXM6bmFtZXM6dGM6U0FNTDoyLjA6c3RhdHVzOlN1Y2Nlc3MiLz48L3NhbWxwOlN0YXR1cz48c2FtbDpBc3NlcnRpb24gSUQ9Il9kNzFhM2E4ZTlmY2M0NWM5ZTlkMjQ4ZWY3MDQ5MzkzZmM4ZjA0ZTVmNzUiIFZlcnNpb249IjIuMCIgSXNzdWVJbnN0YW50PSIyMDI0LTA0LTA4VDEwOjE1OjAwWiI+PHNhbWw6SXNzdWVyPmh0dHBzOi8vaWRwLmV4YW1wbGUub3JnL21ldGFkYXRhPC9zYW1sOklzc3Vlcj48c2FtbDpTdWJqZWN0PjxzYW1sOk5hbWVJRCBGb3JtYXQ9InVybjpvYXNpczpuYW1lczp0YzpTQU1MOjEuMTpuYW1laWQtZm9ybWF0OmVtYWlsQWRkcmVzcyI+amFuZS5kb2VAZXhhbXBsZS5jb208L3NhbWw6TmFtZUlEPjwvc2FtbDpTdWJqZWN0PjxzYW1sOkF0dHJpYnV0ZVN0YXRlbWVudD48c2FtbDpBdHRyaWJ1dGUgTmFtZT0iZGlzcGxheU5hbWUiPjxzYW1sOkF0dHJpYnV0ZVZhbHVlPkphbmUgTydCcmllbjwvc2FtbDpBdHRyaWJ1dGVWYWx1ZT48L3NhbWw6QXR0cmlidXRlPjwvc2FtbDpBdHRyaWJ1dGVTdGF0ZW1lbnQ+PC9zYW1sOkFzc2VydGlvbj48L3NhbWxwOlJlc3BvbnNlPg=="
local CURSOR = "eyJhZnRlciI6IFsiMjAyNC0wNC0wOFQxMDoxNTowMC4xMjNaIiwgIm9yZF8wMDAxODQzNzIwNTkyIl0sICJmaWx0ZXJzIjogeyJzdGF0dXMiOiBbIm9wZW4iLCAicGVuZGluZyJdLCAid2FyZWhvdXNlIjogImV1LXdlc3QtMSJ9LCAidiI6IDN9"
local API = function(extra)
    return with({
        ["User-Agent"] = "ShopApp/3.4.1 (iPhone; iOS 17.4.1; Scale/3.00)", Accept = JSON,
        Authorization = "Bearer " .. JWT, ["Accept-Language"] = "en-US;q=1, fr-FR;q=0.9",
    }, extra)
end

-- a search-box request: GET <path>?<arg>=<phrase form-encoded>
local n_search = 0
local function search(phrase, note, path, arg, headers, encoder)
    n_search = n_search + 1
    return {
        id = string.format("search-%02d", n_search), class = "search", note = note,
        method = "GET", target = (path or "/search") .. "?" .. (arg or "q") .. "=" .. (encoder or f)(phrase),
        headers = headers or chrome({ ["Sec-Fetch-Site"] = "same-origin", Referer = ORIGIN .. "/", Cookie = GA }),
    }
end

-- long-but-ordinary values -------------------------------------------------------
local function order_items(n)
    local t = {}
    for i = 1, n do
        t[i] = string.format([[{"sku":"LIN-SHIRT-%03d","name":"Summer linen shirt, size M (%d of %d)","quantity":%d,"unit_price":{"amount":4999,"currency":"EUR"},"gift":%s,"note":"Colour: sky blue; please don't fold"}]],
            i, i, n, i % 3 + 1, i % 2 == 0 and "true" or "false")
    end
    return table.concat(t, ",")
end
local BIG_ORDER = [[{"order":{"customer":{"id":"cus_PqR8sT","email":"jane.o'brien+orders@example.ie","name":"Jane O'Brien"},"items":[]] ..
    order_items(10) .. [[],"shipping_address":{"line1":"1 Rue de l'\u00c9glise","city":"Montr\u00e9al","postal_code":"H2X 1Y4","country":"CA"},"placed_at":"2024-04-08T10:15:00.000+02:00"}}]]

local function many_rows(n)
    local t = {}
    for i = 1, n do
        t[i] = string.format([[{"id":%d,"title":"Row %d: select all & update later","done":%s,"tags":["q2","ops"],"due":"2024-05-%02dT09:00:00Z"}]],
            i, i, i % 4 == 0 and "true" or "false", i % 28 + 1)
    end
    return "[" .. table.concat(t, ",") .. "]"
end

local GA4_PARAMS = {
    "v=2", "tid=G-7XK2QW9HNM", "gtm=45je4440v9115371637za200", "_p=1712399012345", "gcs=G111", "gcd=13l3l3l3l1",
    "npa=0", "dma=0", "cid=1843720592.1712312345", "ul=en-us", "sr=1920x1080",
    "uaa=x86", "uab=64", "uafvl=Chromium%3B124.0.6367.91%7CGoogle%2520Chrome%3B124.0.6367.91%7CNot-A.Brand%3B99.0.0.0",
    "uamb=0", "uam=", "uap=Windows", "uapv=15.0.0", "uaw=0", "are=1", "frm=0", "pscdl=noapi",
    "_eu=AEA", "_s=3", "sid=1712398765", "sct=4", "seg=1",
    "dl=https%3A%2F%2Fshop.example.com%2Fproducts%2Fsummer-linen-shirt%3Fcolor%3Dblue%26size%3DM",
    "dr=https%3A%2F%2Fwww.google.com%2F", "dt=Summer%20Linen%20Shirt%20%E2%80%93%20Shop",
    "en=view_item", "_ee=1", "_et=4123", "tfd=5210",
    "ep.page_type=product", "ep.content_group=shirts", "ep.logged_in=true", "ep.ab_variant=b",
    "ep.item_list_name=Summer%20Collection", "ep.currency=EUR", "epn.value=49.99",
    "pr1=idLIN-SHIRT-001~nmSummer%20Linen%20Shirt~brShop~caShirts~vaSky%20blue~pr49.99~qt1",
    "pr2=idBELT-04~nmLeather%20Belt~brShop~caAccessories~pr19.00~qt1",
    "up.plan=free", "upn.visits=12", "up.country=CA", "up.newsletter=yes",
    "ep.search_term=linen", "ep.page_path=%2Fproducts%2Fsummer-linen-shirt", "ep.referrer_host=google.com",
    "ep.utm_source=newsletter", "ep.utm_medium=email", "ep.utm_campaign=spring_sale_2024",
    "ep.scroll_depth=75", "epn.engagement_time_msec=4123", "ep.debug_mode=false",
    "ep.consent=granted", "ep.color_scheme=dark", "ep.viewport=1280x720", "_z=fetch",
}

local FACETS = table.concat({
    "color=red", "color=navy", "color=black", "color=off-white", "size=XS", "size=S", "size=M", "size=L",
    "price_min=20", "price_max=150", "brand=Acme%20Outfitters", "brand=North%20%26%20Co", "brand=L%27Atelier",
    "brand=Sunday%20Best", "brand=O%27Neill", "material=linen", "material=organic%20cotton", "material=tencel",
    "sleeve=short", "sleeve=three-quarter", "fit=relaxed", "fit=regular", "occasion=beach", "occasion=office",
    "rating_min=4", "in_stock=1", "ship_to=CA", "sort=price_asc", "page=3", "per_page=48", "view=grid",
    "utm_source=newsletter", "utm_medium=email", "utm_campaign=spring_sale_2024", "utm_content=hero%20banner%20v2",
    "utm_term=linen%20dress", "gclid=Cj0KCQjw2a6wBhCVARIsABPeH1vJ3h8wT5kL2mQx9pN7rS4uV6yZ0aB1cD3eF5gH7iJ9kL_mN0pQ2rS4uV6wX8yZaAbCdEaAh8OEALw_wcB",
    "_gl=1*1x2y3z4*_ga*MTg0MzcyMDU5Mi4xNzEyMzEyMzQ1*_ga_7XK2QW9HNM*MTcxMjM5ODc2NS40LjEuMTcxMjM5OTAxMi4wLjAuMA..",
    "collection=summer-2024", "collection=new-arrivals", "exclude=final-sale", "exclude=pre-order",
    "neckline=v-neck", "neckline=crew", "pattern=solid", "pattern=stripes", "pattern=floral", "length=midi", "length=maxi",
    "care=machine-washable", "origin=portugal", "origin=france", "certification=gots", "certification=oeko-tex",
    "delivery=next-day", "pickup_store=union-square", "price_currency=EUR", "lang=en", "region=eu", "ab=b",
    "cursor=" .. u(CURSOR), "prev_cursor=" .. u(CURSOR), "session_hint=" .. u("0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
}, "&")

local LONG_TEXT = table.concat({
    "Hello team,", "",
    "I'm writing about order #10234 (placed 8 April). The shirt arrived but it's a size L, not M -- I think the",
    "label says \"M\" but the measurements are 5 cm wider. Could you:", "",
    "1) send an M & a return label, or", "2) refund 100% and I'll re-order from the summer collection?", "",
    "FYI: I tried the \"Select size\" drop-down on your site and it kept saying 'out of stock'; refreshing didn't help.",
    "Also, the union-made tag is lovely :)", "",
}, "\r\n")
LONG_TEXT = LONG_TEXT .. ("P.S. Not urgent at all; whenever you have time is fine. Thanks again for the fast shipping! "):rep(36) .. "\r\n\r\nBest,\r\nJane O'Brien"

local COOKIE_2K = GA .. "; " .. SESSION .. "; " .. ONETRUST .. "; " .. PREFS_B64 ..
    "; _fbp=fb.1.1712312345678.1843720592; _gcl_au=1.1.1536271823.1712312345; _hjSessionUser_3456789=eyJpZCI6IjFhMmIzYzRkLTVlNmYtNzg5MC1hYmNkLWVmMDEyMzQ1Njc4OSIsImNyZWF0ZWQiOjE3MTIzMTIzNDU2NzgsImV4aXN0aW5nIjp0cnVlfQ==" ..
    "; ajs_user_id=%22user_8f3a2c%22; ajs_anonymous_id=%2282a44f33-f4e5-48e4-be4b-a5aa089de4ba%22; intercom-device-id-abc123=82a44f33-f4e5-48e4-be4b-a5aa089de4ba" ..
    "; __cf_bm=Xk9.pQ2rS4uV6wX8yZ0aB1cD3eF5gH7iJ9kL_mN0pQ2-1712398765-1.0.1.1-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklmnopqrstuvwxyzABCDEFG" ..
    "; AWSALB=Q2hhbmdlIG1lIGlmIHlvdSBsaWtlOyB0aGlzIGlzIGEgbWFkZS11cCBzdGlja3kgY29va2llIHZhbHVl; AWSALBCORS=Q2hhbmdlIG1lIGlmIHlvdSBsaWtlOyB0aGlzIGlzIGEgbWFkZS11cCBzdGlja3kgY29va2llIHZhbHVl" ..
    "; cart=%7B%22items%22%3A%5B%7B%22sku%22%3A%22LIN-SHIRT-001%22%2C%22qty%22%3A1%7D%2C%7B%22sku%22%3A%22BELT-04%22%2C%22qty%22%3A2%7D%5D%7D" ..
    "; recently_viewed=LIN-SHIRT-001|BELT-04|DRESS-22|HAT-07|SANDAL-3; tz=Europe%2FParis; locale=en-US; currency=EUR; cookieyes-consent=consentid:OTk5ZmZkODg,consent:yes,action:yes,necessary:yes,functional:yes,analytics:yes" ..
    "; ab_exp_1=variant_b; ab_exp_2=control; ab_exp_3=variant_a; feature_flags=new-checkout,fast-search,dark-mode" ..
    "; jwt=" .. JWT .. "; last_search=union+square+hotels; seen_banner=spring_sale_2024"

local REFERER_1K = "https://www.google.com/aclk?sa=l&ai=DChcSEwiQ3sW9uKiFAxVUkWgJHQ8fDdcYABAAGgJ3Zg&ase=2&gclid=Cj0KCQjw2a6wBhCVARIsABPeH1vJ3h8wT5kL2mQx9pN7rS4uV6yZ0aB1cD3eF5gH7iJ9kL_mN0pQ2rS4uV6wX8yZaAbCdEaAh8OEALw_wcB&sig=AOD64_3k9f8Zx2QmL7pR4tV1wY6bN0cE5hJ8kM3qS7uX9zA2dG4fH6jK&nis=4&adurl=https://shop.example.com/collections/summer%3Futm_source%3Dgoogle%26utm_medium%3Dcpc%26utm_campaign%3Dsummer_2024_search%26utm_term%3Dlinen%2520shirt%26gad_source%3D1&q=linen+shirt+women+sale&ved=2ahUKEwiYxvS9uKiFAxVvQ_EDHR3KDkQQ0Qx6BAgHEAE&bih=945&biw=1920&ei=7cATZp2lE9iW9u8P9p2XyAQ&oq=linen+shirt&gs_lp=Egxnd3Mtd2l6LXNlcnAiEWxpbmVuIHNoaXJ0IHdvbWVuMgUQABiABDIFEAAYgAQyBRAAGIAEMgUQABiABDIFEAAYgAQyBRAAGIAEMgUQABiABDIFEAAYgAQyBRAAGIAEMgUQABiABEjFF1DMBViAFHABeAGQAQCYAXWgAd0EqgEDMC41uAEDyAEA-AEBmAIGoALwBMICChAAGEcY1gQYsAOYAwCIBgGQBgiSBwMxLjWgB_Ug&sclient=gws-wiz-serp&uact=5&sourceid=chrome&ie=UTF-8&rlz=1C1GCEA_enUS1098US1098&client=ms-android-google"

local requests = {
    -------------------------------------------------------------- page loads
    { id = "page-01", class = "page", note = "home page, Chrome on Windows, full navigation header set",
      method = "GET", target = "/", headers = chrome({ Cookie = GA }) },
    { id = "page-02", class = "page", note = "product page from a Google result, variant arguments",
      method = "GET", target = "/products/summer-linen-shirt?color=blue&size=M",
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site", Referer = "https://www.google.com/", Cookie = GA .. "; " .. SESSION }) },
    { id = "page-03", class = "page", note = "blog post with an encoded apostrophe in the slug, Firefox",
      method = "GET", target = "/blog/2024/04/what%27s-new-in-v2", headers = firefox({ Referer = "https://news.ycombinator.com/item?id=39950015" }) },
    { id = "page-04", class = "page", note = "account orders, Edge, session and base64 preference cookies",
      method = "GET", target = "/en-gb/account/orders?page=2&status=open",
      headers = edge({ ["Sec-Fetch-Site"] = "same-origin", Referer = ORIGIN .. "/en-gb/account", Cookie = SESSION .. "; " .. PREFS_B64 }) },
    { id = "page-05", class = "page", note = "cart, Safari, OneTrust consent cookie with parentheses, & and =",
      method = "GET", target = "/cart", headers = safari({ Cookie = GA .. "; " .. ONETRUST }) },
    { id = "page-06", class = "page", note = "checkout step with a coupon and utm arguments from an email",
      method = "GET", target = "/checkout?step=shipping&coupon=SUMMER-10%25&utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale_2024",
      headers = chrome({ Referer = "https://mail.google.com/", ["Sec-Fetch-Site"] = "cross-site", Cookie = SESSION }) },
    { id = "page-07", class = "page", note = "versioned docs directory /docs/v1.2/",
      method = "GET", target = "/docs/v1.2/", headers = firefox() },
    { id = "page-08", class = "page", note = "versioned docs page with dots in file name",
      method = "GET", target = "/docs/v1.2/getting-started.v2.html", headers = firefox({ Referer = "https://docs.example.com/docs/v1.2/" }) },
    { id = "page-09", class = "page", note = "wiki title C++ with encoded plus signs",
      method = "GET", target = "/wiki/C%2B%2B", headers = chrome() },
    { id = "page-10", class = "page", note = "wiki title with encoded apostrophes: Rock 'n' roll",
      method = "GET", target = "/wiki/Rock_%27n%27_roll", headers = safari() },
    { id = "page-11", class = "page", note = "@handle path (profile page)",
      method = "GET", target = "/@jane.doe/building-a-proxy-in-c-3f9a1c0e7b2d", headers = iphone() },
    { id = "page-12", class = "page", note = "~user home directory page",
      method = "GET", target = "/~alice/papers/", headers = firefox() },
    { id = "page-13", class = "page", note = "user profile for O'Brien (apostrophe encoded in the path)",
      method = "GET", target = "/users/o%27brien", headers = chrome() },
    { id = "page-14", class = "page", note = "Amazon-style product page with ref arguments",
      method = "GET", target = "/dp/B0C1XYZ123/ref=sr_1_3?crid=2M9KQ7&keywords=linen+shirt&qid=1712398765&sprefix=linen%2Caps%2C187&sr=8-3&th=1&psc=1",
      headers = chrome({ Referer = "https://www.example.com/s?k=linen+shirt&crid=2M9KQ7" }) },
    { id = "page-15", class = "page", note = "Java servlet path parameter ;jsessionid=",
      method = "GET", target = "/shop/catalog.do;jsessionid=3F2A9C1E7B0D4F6A8C2E1B3D5F7A9C0E?category=shoes&page=1", headers = firefox() },
    { id = "page-16", class = "page", note = "MediaWiki search with title=Special:Search",
      method = "GET", target = "/index.php?title=Special:Search&search=union+station&fulltext=1&ns0=1", headers = chrome() },
    { id = "page-17", class = "page", note = "OpenCart route= and path= arguments",
      method = "GET", target = "/index.php?route=product/category&path=20_27&limit=25", headers = edge() },
    { id = "page-18", class = "page", note = "WordPress post by id",
      method = "GET", target = "/?p=123", headers = android() },
    { id = "page-19", class = "page", note = "WordPress editor with the logged-in cookie (values hold %7C pipes)",
      method = "GET", target = "/wp-admin/post.php?post=42&action=edit&classic-editor",
      headers = chrome({ ["Sec-Fetch-Site"] = "same-origin", Referer = "https://blog.example.com/wp-admin/edit.php?post_type=post", Cookie = WP_COOKIE }) },
    { id = "page-20", class = "page", note = "article with every utm_ argument, one with an encoded space",
      method = "GET", target = "/news/article-12345.html?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale_2024&utm_content=hero%20banner&utm_term=linen",
      headers = iphone() },
    { id = "page-21", class = "page", note = "Google Ads click with gclid and gad_source",
      method = "GET", target = "/collections/summer?utm_source=google&utm_medium=cpc&gad_source=1&gclid=Cj0KCQjw2a6wBhCVARIsABPeH1vJ3h8wT5kL2mQx9pN7rS4uV6yZ0aB1cD3eF5gH7iJ9kL_mN0pQ2rS4uV6wX8yZaAbCdEaAh8OEALw_wcB",
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site", Referer = "https://www.google.com/" }) },
    { id = "page-22", class = "page", note = "Facebook click with fbclid",
      method = "GET", target = "/events/summer-market?fbclid=IwAR2xQ9kL3mN7pR1sT5vX8zA0cE4gI6kM9oQ2sU5wY8aC1eG3iK5mO7qS9uW_aem_AbCdEf123",
      headers = android({ Referer = "https://m.facebook.com/" }) },
    { id = "page-23", class = "page", note = "calendar with a time zone holding an encoded slash",
      method = "GET", target = "/calendar/2024/04?view=month&tz=America%2FNew_York&start=2024-04-01", headers = edge() },
    { id = "page-24", class = "page", note = "map URL with @ and commas in the path",
      method = "GET", target = "/maps/@48.8584,2.2945,17z/data=!3m1!4b1", headers = chrome() },
    { id = "page-25", class = "page", note = "compare page with comma-separated ids",
      method = "GET", target = "/compare?ids=123,456,789&highlight=price,weight", headers = safari() },
    { id = "page-26", class = "page", note = "forum slug holding SQL words",
      method = "GET", target = "/r/programming/comments/1bz9x2k/what_is_the_best_way_to_learn_sql_joins/", headers = firefox() },
    { id = "page-27", class = "page", note = "Q&A slug: how to select from a table where a column is null",
      method = "GET", target = "/questions/12345678/how-to-select-from-a-table-where-column-is-null",
      headers = chrome({ Referer = "https://www.google.com/search?q=sql+select+where+null&oq=sql+select+where+null" }) },
    { id = "page-28", class = "page", note = "blog slug drop-table-vs-truncate",
      method = "GET", target = "/blog/drop-table-vs-truncate-vs-delete", headers = edge() },
    { id = "page-29", class = "page", note = "mobile Safari page load with en-AU language",
      method = "GET", target = "/stores/sydney?open_now=true", headers = iphone({ Cookie = GA }) },
    { id = "page-30", class = "page", note = "Android Chrome with pt-BR and a UTF-8 path (Sao Paulo with a tilde)",
      method = "GET", target = "/lojas/S%C3%A3o%20Paulo?bairro=Pinheiros", headers = android() },
    { id = "page-31", class = "page", note = "download of a dotted file name via an argument named file",
      method = "GET", target = "/download?file=report.v1.2.pdf&inline=0", headers = chrome() },
    { id = "page-32", class = "page", note = "document viewer with a nested path in an argument",
      method = "GET", target = "/view?doc=handbook/chapter-3.md&rev=a1b2c3d", headers = firefox() },
    { id = "page-33", class = "page", note = "image proxy with a full https URL argument (unencoded)",
      method = "GET", target = "/img?src=https://cdn.example.com/photos/2024/beach.jpg&w=640&q=80", headers = chrome() },
    { id = "page-34", class = "page", note = "RSS feed",
      method = "GET", target = "/feed.xml", headers = { ["User-Agent"] = "Feedly/1.0 (+http://www.feedly.com/fetcher.html; 42 subscribers)", Accept = "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.8" } },
    { id = "page-35", class = "page", note = "admin dashboard page (a word, not an attack)",
      method = "GET", target = "/admin/reports/sales?from=2024-01-01&to=2024-03-31&group=week", headers = chrome({ Cookie = SESSION }) },
    { id = "page-36", class = "page", note = "printable invoice with page-size arguments",
      method = "GET", target = "/invoices/INV-2024-0042/print?layout=a4&copies=2&lang=fr", headers = safari() },
    { id = "page-37", class = "page", note = "Referer whose query holds a natural-language phrase with quotes",
      method = "GET", target = "/hotels/union-square",
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site", Referer = "https://www.bing.com/search?q=%22union+square%22+hotels+near+me&form=QBLH" }) },
    { id = "page-38", class = "page", note = "login page with a return_to that is itself a path with a query",
      method = "GET", target = "/login?return_to=%2Faccount%2Forders%3Fpage%3D2%26status%3Dopen", headers = firefox() },
    { id = "page-39", class = "page", note = "unsubscribe link with a base64url token and email",
      method = "GET", target = "/email/unsubscribe?e=jane.doe%2Bnews%40example.com&t=eyJsaXN0IjoibmV3cyIsInVpZCI6NDJ9&list=weekly",
      headers = iphone() },
    { id = "page-40", class = "page", note = "Japanese path and query, percent-encoded UTF-8",
      method = "GET", target = "/%E6%9D%B1%E4%BA%AC/%E3%83%A9%E3%83%BC%E3%83%A1%E3%83%B3?sort=%E4%BA%BA%E6%B0%97",
      headers = chrome({ ["Accept-Language"] = "ja-JP,ja;q=0.9,en-US;q=0.8,en;q=0.7" }) },

    ---------------------------------------------------------- static assets
    { id = "asset-01", class = "asset", note = "hashed JS bundle",
      method = "GET", target = "/static/app.3f9a1c.js", headers = asset("script", "*/*") },
    { id = "asset-02", class = "asset", note = "hashed CSS",
      method = "GET", target = "/static/css/main.8c2e1f07.css", headers = asset("style", "text/css,*/*;q=0.1") },
    { id = "asset-03", class = "asset", note = "woff2 font",
      method = "GET", target = "/fonts/x.woff2", headers = asset("font", "*/*", { Origin = ORIGIN }) },
    { id = "asset-04", class = "asset", note = "font with a version query",
      method = "GET", target = "/fonts/Inter-roman.var.woff2?v=3.19", headers = asset("font", "*/*", { Origin = ORIGIN }) },
    { id = "asset-05", class = "asset", note = "image whose name holds an encoded space",
      method = "GET", target = "/images/a%20b.png", headers = asset("image", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8") },
    { id = "asset-06", class = "asset", note = "retina image with @2x",
      method = "GET", target = "/img/logo@2x.png", headers = asset("image", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8") },
    { id = "asset-07", class = "asset", note = "favicon",
      method = "GET", target = "/favicon.ico", headers = asset("image", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8") },
    { id = "asset-08", class = "asset", note = "apple touch icon, Safari",
      method = "GET", target = "/apple-touch-icon-precomposed.png", headers = { ["User-Agent"] = UA_IPHONE, Accept = "*/*" } },
    { id = "asset-09", class = "asset", note = "web app manifest",
      method = "GET", target = "/manifest.webmanifest", headers = asset("manifest", "*/*") },
    { id = "asset-10", class = "asset", note = "service worker script",
      method = "GET", target = "/sw.js", headers = asset("serviceworker", "*/*", { ["Service-Worker"] = "script", ["Cache-Control"] = "max-age=0" }) },
    { id = "asset-11", class = "asset", note = "source map",
      method = "GET", target = "/static/js/chunk-vendors.5f3e9a.js.map", headers = { ["User-Agent"] = UA_CHROME, Accept = "*/*" } },
    { id = "asset-12", class = "asset", note = "Next.js chunk with underscores and brackets in the name, encoded",
      method = "GET", target = "/_next/static/chunks/pages/products/%5Bslug%5D-9c1e2f3a4b5d6e7f.js", headers = asset("script", "*/*") },
    { id = "asset-13", class = "asset", note = "Next.js image optimiser with an encoded path argument",
      method = "GET", target = "/_next/image?url=%2Fimages%2Fhero.jpg&w=1080&q=75", headers = asset("image", "image/avif,image/webp,*/*") },
    { id = "asset-14", class = "asset", note = "Vite asset with a mixed-case hash",
      method = "GET", target = "/assets/index-BfX3k2Qa.js", headers = asset("script", "*/*", { Origin = ORIGIN }) },
    { id = "asset-15", class = "asset", note = "WordPress upload with dimensions in the name",
      method = "GET", target = "/wp-content/uploads/2024/03/beach-photo-1024x768.jpg", headers = asset("image", "image/avif,image/webp,*/*") },
    { id = "asset-16", class = "asset", note = "WordPress core CSS with ver=",
      method = "GET", target = "/wp-includes/css/dist/block-library/style.min.css?ver=6.5.2", headers = asset("style", "text/css,*/*;q=0.1") },
    { id = "asset-17", class = "asset", note = "robots.txt from Googlebot",
      method = "GET", target = "/robots.txt", headers = { ["User-Agent"] = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Accept = "text/plain,text/html,*/*", ["Accept-Encoding"] = "gzip, deflate, br" } },
    { id = "asset-18", class = "asset", note = "sitemap index",
      method = "GET", target = "/sitemap_index.xml", headers = { ["User-Agent"] = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", Accept = "*/*" } },
    { id = "asset-19", class = "asset", note = ".well-known/security.txt (a dot-directory that is legitimate)",
      method = "GET", target = "/.well-known/security.txt", headers = firefox() },
    { id = "asset-20", class = "asset", note = ".well-known/openid-configuration",
      method = "GET", target = "/.well-known/openid-configuration", headers = { ["User-Agent"] = "Go-http-client/2.0", Accept = JSON } },
    { id = "asset-21", class = "asset", note = "ACME http-01 challenge",
      method = "GET", target = "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
      headers = { ["User-Agent"] = "Mozilla/5.0 (compatible; Let's Encrypt validation server; +https://www.letsencrypt.org)", Accept = "*/*" } },
    { id = "asset-22", class = "asset", note = "apple-app-site-association",
      method = "GET", target = "/.well-known/apple-app-site-association", headers = { ["User-Agent"] = "AASA-Bot/1.0.0", Accept = "*/*" } },
    { id = "asset-23", class = "asset", note = "video segment with a byte range",
      method = "GET", target = "/media/intro-1080p.mp4", headers = asset("video", "*/*", { Range = "bytes=0-", ["Accept-Encoding"] = "identity" }) },
    { id = "asset-24", class = "asset", note = "HLS playlist and token query",
      method = "GET", target = "/live/stream_720p/index.m3u8?token=Q2hhbmdlTWU%3D&expires=1712402365", headers = { ["User-Agent"] = "AppleCoreMedia/1.0.0.21E236 (iPhone; U; CPU OS 17_4_1 like Mac OS X; en_us)", Accept = "*/*" } },
    { id = "asset-25", class = "asset", note = "SVG sprite with a fragment-free symbol argument",
      method = "GET", target = "/icons/sprite.svg?v=20240408", headers = asset("image", "image/svg+xml,image/*,*/*;q=0.8") },
    { id = "asset-26", class = "asset", note = "jQuery from a CDN path with version in a directory",
      method = "GET", target = "/ajax/libs/jquery/3.7.1/jquery.min.js", headers = asset("script", "*/*", { ["Sec-Fetch-Site"] = "cross-site" }) },
    { id = "asset-27", class = "asset", note = "cache-busting timestamp query",
      method = "GET", target = "/static/config.json?_=1712399012345", headers = asset("empty", JSON) },
    { id = "asset-28", class = "asset", note = "PDF with dots and a dash in the name, inside a dotted directory",
      method = "GET", target = "/downloads/v2.4.1/release-notes.v2.4.1-final.pdf", headers = edge() },

    ----------------------------------------------------------------- search
    search("select a shirt from our summer collection", "SQL keywords select ... from in prose"),
    search("union square hotels", "union"),
    search("drop shipping and order by phone", "drop / order by in prose"),
    search("what's new", "apostrophe"),
    search("O'Brien", "surname with an apostrophe", "/directory/search", "name"),
    search("rock 'n' roll", "two apostrophes"),
    search("1=1 is true in math", "1=1 without a quote or OR"),
    search("5 < 6 and 7 > 3", "angle brackets and 'and'"),
    search("Tom & Jerry", "ampersand, encoded"),
    search("C# vs C++", "# and + encoded"),
    search("50% off", "percent sign encoded as %25"),
    search("how to use | in regex", "pipe"),
    search("cat pictures", "the word cat"),
    search("ls 200 lenses", "the word ls"),
    search("where to sleep in Paris", "sleep and where"),
    search("script writing course", "the word script"),
    search("alert levels", "the word alert"),
    search("javascript tutorial for beginners", "the word javascript (no colon)"),
    search("the onload event", "the word onload (no =)"),
    search("insert coin arcade machines", "insert"),
    search("update firmware on my router", "update"),
    search("delete account", "delete", "/help/search", "query"),
    search("exec chair ergonomic", "exec"),
    search("char broil grill parts", "char (an SQL function name)"),
    search("concat strings in excel", "concat"),
    search("null and void meaning", "null and"),
    search("having fun in the sun", "having"),
    search("group by size chart", "group by"),
    search("benchmark laptops 2024", "benchmark"),
    search("wait for delay compensation on flights", "wait for delay"),
    search("black or white t-shirt and jeans", "or / and between words"),
    search("I'm feeling lucky", "apostrophe in a contraction"),
    search("don't stop believin'", "trailing apostrophe"),
    search("L'Or\195\169al shampoo", "apostrophe plus UTF-8 \195\169 percent-encoded"),
    search("McDonald's menu prices", "possessive apostrophe"),
    search("Ben & Jerry's ice cream", "ampersand and apostrophe"),
    search("\"union jack\" flag", "quoted exact-phrase search"),
    search("jaguar -car", "minus operator"),
    search("site:example.com pricing", "site: operator"),
    search("jane.doe+news@example.com", "email with plus", "/admin/users", "email"),
    search("+1 (555) 010-2368", "phone number with plus and parentheses", "/contacts", "phone"),
    search("price < $50", "less-than and dollar"),
    search("2 + 2 = 4", "plus and equals"),
    search("what is 3/4 of 12?", "slash and question mark"),
    search("#summer hashtag ideas", "hash sign encoded %23"),
    search("git commit -m message", "command line words with a dash option"),
    search("npm install --save-dev typescript", "double dash in a developer query"),
    search("python print() function", "empty parentheses"),
    search("sql select where clause examples", "developer search: select ... where"),
    search("how to drop a table in postgres", "developer search: drop a table"),
    search("\230\157\177\228\186\172 \227\131\169\227\131\188\227\131\161\227\131\179", "Japanese text, UTF-8 percent-encoded", "/search", "q", chrome({ ["Accept-Language"] = "ja-JP,ja;q=0.9" })),
    search("caf\195\169 pr\195\168s de moi", "French accents"),
    search("Stra\195\159e Berlin", "German sharp s"),
    search("\240\159\141\149 near me", "emoji (4-byte UTF-8)", "/search", "q", iphone()),
    search("\208\156\208\190\209\129\208\186\208\178\208\176 \208\191\208\190\208\179\208\190\208\180\208\176", "Cyrillic"),
    search("<3 love quotes", "less-than followed by a digit"),
    search("what does the <br> tag do", "an HTML tag name typed as a question"),
    search("1/2 cup to grams", "fraction"),
    search("AT&T store hours", "ampersand inside a brand"),
    search("Q&A section", "ampersand"),
    search("re: your order #12345", "colon and hash"),
    search("10:30 am to 2:00 pm", "times"),
    search("Mr. & Mrs. Smith (2005)", "parentheses and periods"),
    search("who's on first?", "apostrophe and question mark"),
    search("shell beach california", "shell"),
    search("bash birthday party ideas", "bash"),
    search("curl hair tutorial", "curl"),
    search("echo dot setup", "echo"),
    search("kill bill vol 1", "kill"),
    search("ping pong table", "ping"),
    search("system of a down tickets", "system"),
    search("eval form for employees", "eval"),
    search("template literal ${name} in javascript", "dollar-brace (not a lookup: no colon prefix)", "/search", "q", firefox()),
    search("linen shirt", "Amazon-style /s?k=", "/s", "k"),
    search("summer dress", "WordPress ?s=", "/", "s"),
    search("union station to times square", "YouTube-style search_query", "/results", "search_query"),
    search("sleep mask silk", "Magento catalog search", "/catalogsearch/result/", "q"),
    search("order tracking", "autocomplete via fetch, %20 spaces", "/api/autocomplete", "term", xhr(), u),
    search("50% off select styles", "percent and select, %20 spaces", "/search", "q", safari(), u),

    ----------------------------------------------------------- API: reads
    { id = "api-read-01", class = "api-read", note = "JSON:API sort, raw page[size] and filter[status] brackets",
      method = "GET", target = "/api/v2/users/123/orders?sort=-created_at&page[size]=50&filter[status]=open", headers = xhr() },
    { id = "api-read-02", class = "api-read", note = "same with encoded brackets",
      method = "GET", target = "/api/v2/users/123/orders?sort=-created_at&page%5Bnumber%5D=2&page%5Bsize%5D=50&filter%5Bstatus%5D=open", headers = API() },
    { id = "api-read-03", class = "api-read", note = "JSON:API sparse fieldsets and dotted include",
      method = "GET", target = "/api/v1/articles?fields[articles]=title,body,author&fields[people]=name&include=author,comments.author", headers = API({ Accept = "application/vnd.api+json" }) },
    { id = "api-read-04", class = "api-read", note = "GitHub-style issues list with since timestamp and labels",
      method = "GET", target = "/repos/octo-org/shop/issues?state=open&labels=bug,ui&per_page=100&since=2024-04-01T00:00:00Z&direction=desc",
      headers = { ["User-Agent"] = "octokit-rest.js/20.0.2 octokit-core.js/5.0.1 Node.js/20", Accept = "application/vnd.github+json", Authorization = "Bearer ghp_16C7e42F292c6912E7710c838347Ae178B4a", ["X-GitHub-Api-Version"] = "2022-11-28" } },
    { id = "api-read-05", class = "api-read", note = "GitHub search query with qualifiers, colons and +",
      method = "GET", target = "/search/issues?q=repo%3Aocto-org%2Fshop+is%3Aissue+is%3Aopen+label%3A%22good+first+issue%22&sort=updated&order=desc",
      headers = { ["User-Agent"] = "gh/2.47.0", Accept = "application/vnd.github+json", Authorization = "token gho_16C7e42F292c6912E7710c838347Ae178B4a" } },
    { id = "api-read-06", class = "api-read", note = "Stripe-style list with email containing + and created[gte]",
      method = "GET", target = "/v1/customers?email=jane.doe%2Btest%40example.com&limit=3&created[gte]=1712000000&expand[]=data.default_source",
      headers = { ["User-Agent"] = "Stripe/v1 NodeBindings/14.25.0", Authorization = "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc", ["Stripe-Version"] = "2024-04-10" } },
    { id = "api-read-07", class = "api-read", note = "Lucene-style query with quotes, AND and colons",
      method = "GET", target = "/api/search?q=" .. u("name:\"John Smith\" AND status:active AND created:[2024-01-01 TO *]") .. "&size=20", headers = API() },
    { id = "api-read-08", class = "api-read", note = "OData $filter/$select/$orderby with quotes and 'and'",
      method = "GET", target = "/v1.0/users?$filter=" .. u("startswith(displayName,'O''Br') and accountEnabled eq true") .. "&$select=displayName,mail,jobTitle&$orderby=displayName%20desc&$top=20&$count=true",
      headers = { ["User-Agent"] = "Microsoft-Graph-SDK/1.0", Authorization = "Bearer " .. ID_TOKEN, ConsistencyLevel = "eventual", Accept = JSON } },
    { id = "api-read-09", class = "api-read", note = "PostgREST select=/order= and operators",
      method = "GET", target = "/rest/v1/orders?select=id,total,customer(name,email)&status=eq.open&total=gte.100&order=created_at.desc.nullslast&limit=50",
      headers = { ["User-Agent"] = "supabase-js/2.42.0", apikey = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.Zm9vYmFyYmF6", Authorization = "Bearer " .. JWT, Accept = JSON } },
    { id = "api-read-10", class = "api-read", note = "Parse/Mongo-style where= with $gt in JSON",
      method = "GET", target = "/parse/classes/Score?where=" .. u([[{"score":{"$gte":1000},"player":{"$in":["Jane","Sean"]}}]]) .. "&order=-score&limit=10",
      headers = { ["User-Agent"] = "Parse/4.3.1 (iOS)", ["X-Parse-Application-Id"] = "shopapp", Accept = JSON } },
    { id = "api-read-11", class = "api-read", note = "ids as repeated ids[] arguments",
      method = "GET", target = "/api/products?ids[]=101&ids[]=102&ids[]=103&fields=id,name,price", headers = xhr() },
    { id = "api-read-12", class = "api-read", note = "bounding box with negative decimals",
      method = "GET", target = "/api/places?bbox=-122.52,37.70,-122.35,37.83&zoom=12&types=cafe|bakery", headers = xhr() },
    { id = "api-read-13", class = "api-read", note = "UTF-8 city name in a query",
      method = "GET", target = "/api/geo/lookup?city=S%C3%A3o%20Paulo&country=BR&lang=pt-BR", headers = API() },
    { id = "api-read-14", class = "api-read", note = "jQuery JSONP callback name and cache buster",
      method = "GET", target = "/api/stock?sku=LIN-SHIRT-001&callback=jQuery36008214785601258723_1712399012345&_=1712399012346",
      headers = { ["User-Agent"] = UA_FIREFOX, Accept = "text/javascript, application/javascript, application/ecmascript, application/x-ecmascript, */*; q=0.01", ["X-Requested-With"] = "XMLHttpRequest", Referer = ORIGIN .. "/products/summer-linen-shirt" } },
    { id = "api-read-15", class = "api-read", note = "date range with an encoded +02:00 offset",
      method = "GET", target = "/api/reports/revenue?from=2024-01-01&to=2024-03-31T23:59:59%2B02:00&granularity=week&currency=EUR", headers = API() },
    { id = "api-read-16", class = "api-read", note = "email with an apostrophe (legal) as a lookup key",
      method = "GET", target = "/api/v2/users?email=" .. u("sean.o'brien@example.ie"), headers = API() },
    { id = "api-read-17", class = "api-read", note = "tags with C#, C++ and .NET",
      method = "GET", target = "/api/questions?tagged=" .. u("c#;c++;.net") .. "&sort=votes&page=1", headers = API() },
    { id = "api-read-18", class = "api-read", note = "npm semver range with >= and <",
      method = "GET", target = "/-/v1/search?text=" .. u("express@>=4.18.0 <5.0.0") .. "&size=20", headers = { ["User-Agent"] = "npm/10.5.0 node/v20.12.1 linux x64 workspaces/false", Accept = JSON } },
    { id = "api-read-19", class = "api-read", note = "cron expression with */5 and spaces",
      method = "GET", target = "/api/schedules/validate?cron=" .. u("*/5 * * * 1-5") .. "&tz=UTC", headers = API() },
    { id = "api-read-20", class = "api-read", note = "username pattern regex with ^ [ ] { } $",
      method = "GET", target = "/api/validation/rules?field=username&pattern=" .. u("^[a-z0-9_-]{3,16}$"), headers = xhr() },
    { id = "api-read-21", class = "api-read", note = "math expression for a calculator",
      method = "GET", target = "/api/calc?expr=" .. u("(x^2 + y^2) / 2 * 3.5 - 1"), headers = xhr() },
    { id = "api-read-22", class = "api-read", note = "S3-style prefix and delimiter listing",
      method = "GET", target = "/?list-type=2&prefix=images%2F2024%2F04%2F&delimiter=%2F&max-keys=1000&continuation-token=1ueGcxLPRx1Tr%2FXYExHnhbYLgveDs2J%2FwmBkgUbbA6ucqq%2Bc%3D",
      headers = { ["User-Agent"] = "aws-sdk-js/3.554.0 ua/2.0 os/linux#6.5.0 lang/js md/nodejs#20.12.1 api/s3#3.554.0", ["x-amz-date"] = "20240408T101500Z", ["x-amz-content-sha256"] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                  Authorization = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240408/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024" } },
    { id = "api-read-23", class = "api-read", note = "cursor pagination with a base64 cursor (+ / = encoded)",
      method = "GET", target = "/api/v2/events?limit=100&cursor=" .. u(CURSOR), headers = API() },
    { id = "api-read-24", class = "api-read", note = "signed URL with an encoded signature",
      method = "GET", target = "/files/exports/orders-2024-q1.csv?X-Expires=1712402365&X-Signature=" .. u("PiPoFgA5WUoziU9lZOGxNIu9egCI1CxKy3PurtWcAJ0="), headers = chrome() },
    { id = "api-read-25", class = "api-read", note = "REST resource by UUID",
      method = "GET", target = "/api/v2/carts/8099ffd8-5f39-415b-ba66-aee1a7110cf7", headers = xhr() },
    { id = "api-read-26", class = "api-read", note = "SKU with a slash encoded in a path segment",
      method = "GET", target = "/api/v2/products/ACME%2F2024%2FLIN-01/stock", headers = API() },
    { id = "api-read-27", class = "api-read", note = "sort on two fields and a negated one",
      method = "GET", target = "/api/v2/orders?sort=status,-total,created_at&fields=id,status,total", headers = API() },
    { id = "api-read-28", class = "api-read", note = "Elasticsearch-ish q with wildcard and boost",
      method = "GET", target = "/api/catalog/_search?q=" .. u("title:linen* OR description:\"summer shirt\"^2") .. "&from=0&size=24", headers = API() },
    { id = "api-read-29", class = "api-read", note = "Basic-auth client reading a health endpoint",
      method = "GET", target = "/api/health?verbose=1", headers = { ["User-Agent"] = "curl/8.5.0", Accept = "*/*", Authorization = "Basic amFuZTpzM2NyM3QrLz0=" } },
    { id = "api-read-30", class = "api-read", note = "feature flags with JSON context in a header-safe argument",
      method = "GET", target = "/sdk/evalx/contexts/" .. u("eyJrZXkiOiJ1c2VyXzhmM2EyYyIsImtpbmQiOiJ1c2VyIn0="), headers = { ["User-Agent"] = "JSClient/3.1.5", Accept = JSON } },
    { id = "api-read-31", class = "api-read", note = "query with empty values and a bare flag",
      method = "GET", target = "/api/v2/orders?status=&q=&archived&limit=25", headers = xhr() },
    { id = "api-read-32", class = "api-read", note = "nested bracket filter names as frameworks serialise them",
      method = "GET", target = "/api/v2/products?filter[price][gte]=10&filter[price][lte]=99.99&filter[tags][in][]=linen&filter[tags][in][]=summer", headers = xhr() },

    ---------------------------------------------------------- API: writes
    { id = "api-write-01", class = "api-write", note = "create an order: nested objects, arrays, unicode escapes, apostrophes",
      method = "POST", target = "/api/v2/orders", headers = API({ ["Content-Type"] = JSON, ["Idempotency-Key"] = "82a44f33-f4e5-48e4-be4b-a5aa089de4ba" }),
      body = [[{"customer_id":123,"items":[{"sku":"LIN-SHIRT-001","qty":1,"options":{"size":"M","colour":"sky blue"}},{"sku":"BELT-04","qty":2}],"shipping":{"name":"Se\u00e1n O'Brien","line1":"12 Main St., Apt #4","city":"Dublin","country":"IE","phone":"+353 1 555 0199"},"notes":"Leave with the neighbour if nobody's home; ring twice.","gift_message":"Happy 30th! <3","coupon":"SUMMER-10%"}]] },
    { id = "api-write-02", class = "api-write", note = "update a profile: bio with &, #, >, ; and an URL",
      method = "PUT", target = "/api/v2/users/123", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"name":"Zo\u00eb O'Neil-Smith","email":"zoe@example.com","bio":"Full-stack dev; I love C# & F#. Coffee > tea. Blog: https://example.com/blog?tag=rust&page=2","website":"https://zoe.example.org/","birthday":"1992-02-29","locale":"en-IE","timezone":"Europe/Dublin"}]] },
    { id = "api-write-03", class = "api-write", note = "RFC 6902 JSON Patch with /-paths",
      method = "PATCH", target = "/api/v2/users/123", headers = API({ ["Content-Type"] = "application/json-patch+json" }),
      body = [=[[{"op":"replace","path":"/email","value":"jane@example.com"},{"op":"remove","path":"/tags/0"},{"op":"add","path":"/tags/-","value":"vip"},{"op":"test","path":"/version","value":7}]]=] },
    { id = "api-write-04", class = "api-write", note = "RFC 7396 merge patch with null",
      method = "PATCH", target = "/api/v2/orders/10234", headers = API({ ["Content-Type"] = "application/merge-patch+json", ["If-Match"] = [["v7-3f9a1c"]] }),
      body = [[{"status":"cancelled","cancel_reason":"Customer changed their mind - ordered the wrong size","coupon":null}]] },
    { id = "api-write-05", class = "api-write", note = "DELETE a session",
      method = "DELETE", target = "/api/v2/users/123/sessions/3f9a1c0e7b2d", headers = API() },
    { id = "api-write-06", class = "api-write", note = "DELETE with a query flag",
      method = "DELETE", target = "/api/v2/webhooks/wh_42?force=true", headers = API() },
    { id = "api-write-07", class = "api-write", note = "comment in markdown: code spans with backticks, lists, links, quotes",
      method = "POST", target = "/api/v2/issues/42/comments", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"body":"Thanks! I reproduced it on `v1.2.3`:\n\n1. Run `npm run build -- --watch`\n2. Open the *Orders* page & sort by **date**\n3. It's blank until you refresh\n\n> It works if you select another tab first.\n\nSee [the docs](https://docs.example.com/v1.2/orders?tab=sorting) for what's expected.\n\n```js\nconst total = items.reduce((a, b) => a + b.price, 0);\n```"}]] },
    { id = "api-write-08", class = "api-write", note = "analytics batch with page titles, URLs and a user agent inside JSON",
      method = "POST", target = "/v1/batch", headers = xhr({ ["Content-Type"] = "text/plain;charset=UTF-8" }),
      body = [[{"batch":[{"type":"page","name":"Union Square Hotels | Book Now","properties":{"url":"https://shop.example.com/hotels/union-square?utm_source=google","referrer":"https://www.google.com/","title":"Union Square Hotels | Book Now","search":"?utm_source=google"},"context":{"userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36","locale":"en-US"},"anonymousId":"82a44f33-f4e5-48e4-be4b-a5aa089de4ba","timestamp":"2024-04-08T10:15:00.123Z"},{"type":"track","event":"Product Added","properties":{"sku":"LIN-SHIRT-001","price":49.99,"quantity":1}}],"sentAt":"2024-04-08T10:15:01.000Z"}]] },
    { id = "api-write-09", class = "api-write", note = "client error report with a JS stack trace",
      method = "POST", target = "/api/client-errors", headers = xhr({ ["Content-Type"] = JSON }),
      body = [[{"message":"TypeError: Cannot read properties of undefined (reading 'map')","stack":"TypeError: Cannot read properties of undefined (reading 'map')\n    at OrderList (https://shop.example.com/static/app.3f9a1c.js:1:23456)\n    at renderWithHooks (https://shop.example.com/static/vendor.8c2e1f.js:2:34567)","url":"https://shop.example.com/account/orders?page=2","line":1,"column":23456}]] },
    { id = "api-write-10", class = "api-write", note = "CSP violation report (script-src words in a report)",
      method = "POST", target = "/csp-report", headers = { ["User-Agent"] = UA_CHROME, ["Content-Type"] = "application/csp-report" },
      body = [[{"csp-report":{"document-uri":"https://shop.example.com/checkout","referrer":"","violated-directive":"script-src-elem","effective-directive":"script-src-elem","original-policy":"default-src 'self'; script-src 'self' https://js.stripe.com; report-uri /csp-report","disposition":"enforce","blocked-uri":"inline","line-number":12,"source-file":"https://shop.example.com/checkout","status-code":200,"script-sample":""}}]] },
    { id = "api-write-11", class = "api-write", note = "meeting notes with select / update / delete / union as plain verbs",
      method = "POST", target = "/api/notes", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"title":"Vendor sync","text":"Action items: select a vendor by Friday, update the budget sheet, delete the old drafts, and ask HR about the union contract. Where: room 4B. Drop-in welcome."}]] },
    { id = "api-write-12", class = "api-write", note = "spreadsheet cells with formulas (=SUM(...))",
      method = "PUT", target = "/api/sheets/budget/cells", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"cells":[{"ref":"A1","value":"Item"},{"ref":"B11","value":"=SUM(B2:B10)"},{"ref":"C11","value":"=IF(B11>1000,\"over\",\"ok\")"}]}]] },
    { id = "api-write-13", class = "api-write", note = "base64 file upload in JSON (PNG header, + / =)",
      method = "POST", target = "/api/v2/users/123/avatar", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"filename":"avatar.v2.png","content_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9h+1qsJ8W4nZuZ0J9XlSUyNOM7ET6+QuICfAm2tYwOZF2GzjDHjh503Bp3Ss6gAjZvGXhmL/tN0q54GykG"}]] },
    { id = "api-write-14", class = "api-write", note = "multipart upload of a CSV with a dotted file name",
      method = "POST", target = "/api/imports", headers = API({ ["Content-Type"] = "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW" }),
      body = "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\ncustomers\r\n" ..
             "------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"file\"; filename=\"report.v1.2.csv\"\r\nContent-Type: text/csv\r\n\r\n" ..
             "id,name,email,notes\r\n1,Jane O'Brien,jane@example.com,\"Likes select items; VIP\"\r\n2,\"Smith, John\",john@example.com,\"Ordered by phone & email\"\r\n\r\n" ..
             "------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n" },
    { id = "api-write-15", class = "api-write", note = "SOAP request in XML",
      method = "POST", target = "/services/OrderService", headers = { ["User-Agent"] = "Apache-HttpClient/4.5.14 (Java/17.0.10)", ["Content-Type"] = "text/xml; charset=utf-8", SOAPAction = [["urn:GetOrderStatus"]] },
      body = [[<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:ord="urn:example:orders"><soapenv:Header/><soapenv:Body><ord:GetOrderStatus><ord:OrderId>10234</ord:OrderId><ord:Customer>O'Brien &amp; Sons</ord:Customer></ord:GetOrderStatus></soapenv:Body></soapenv:Envelope>]] },
    { id = "api-write-16", class = "api-write", note = "settings with booleans, numbers, null and nested arrays",
      method = "PUT", target = "/api/v2/settings", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"notifications":{"email":true,"sms":false,"digest":"weekly","quiet_hours":[ [22,0],[7,30] ]},"privacy":{"share_data":false,"retention_days":365},"theme":null,"ratio":0.75,"max":1e6}]] },
    { id = "api-write-17", class = "api-write", note = "bulk action with an ids array",
      method = "POST", target = "/api/v2/orders/bulk", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"action":"archive","ids":[10231,10232,10233,10234],"reason":"older than 1 year"}]] },
    { id = "api-write-18", class = "api-write", note = "support ticket with CR LF escapes and a pasted error message",
      method = "POST", target = "/api/tickets", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"subject":"Can't log in since update","body":"Hi,\r\nsince this morning I get \"Error 500 - something went wrong\" when I log in.\r\nI've cleared cookies & cache.\r\nBrowser: Firefox 125 on Ubuntu.\r\nThanks!","priority":"normal"}]] },
    { id = "api-write-19", class = "api-write", note = "raw UTF-8 text in a JSON body",
      method = "POST", target = "/api/reviews", headers = API({ ["Content-Type"] = "application/json; charset=utf-8" }),
      body = "{\"product\":\"LIN-SHIRT-001\",\"rating\":5,\"text\":\"Tr\195\168s belle chemise ! La qualit\195\169 est top \226\128\148 je recommande \240\159\145\141\",\"author\":\"Ren\195\169e\"}" },
    { id = "api-write-20", class = "api-write", note = "webhook subscription with a callback URL",
      method = "POST", target = "/api/v2/webhooks", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"url":"https://hooks.example.com/shop/orders?token=abc123&v=2","events":["order.created","order.updated"],"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]] },
    { id = "api-write-21", class = "api-write", note = "code snippet saved in a gist-like API (shell command in a file)",
      method = "POST", target = "/api/snippets", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"title":"Deploy notes","language":"markdown","content":"# Deploy\n\nRun `make deploy ENV=prod` then check the dashboard.\nIf it fails, open an issue and tag @ops."}]] },
    { id = "api-write-22", class = "api-write", note = "PATCH with a form-encoded body",
      method = "PATCH", target = "/api/v1/profile", headers = xhr({ ["Content-Type"] = FORM }),
      body = "display_name=" .. f("Jos\195\169 & Mar\195\173a") .. "&headline=" .. f("CTO @ Acme | ex-Google | 'builder'") },
    { id = "api-write-23", class = "api-write", note = "address book entry with parentheses in the phone number",
      method = "POST", target = "/api/contacts", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"first":"D'Angelo","last":"Smith-Jones","phones":[{"type":"mobile","number":"+1 (555) 010-2368"}],"emails":["d.angelo+work@example.com"],"company":"Procter & Gamble"}]] },
    { id = "api-write-24", class = "api-write", note = "search saved as a JSON filter with operators in field names",
      method = "POST", target = "/api/saved-searches", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"name":"Big open orders","filter":{"and":[{"field":"status","op":"=","value":"open"},{"field":"total","op":">=","value":100}]},"sort":[{"field":"created_at","dir":"desc"}]}]] },
    { id = "api-write-25", class = "api-write", note = "PUT of plain text",
      method = "PUT", target = "/api/v2/documents/readme/content", headers = API({ ["Content-Type"] = "text/plain; charset=utf-8" }),
      body = "Welcome!\n\nThis is the team wiki. Ask questions in #help and add pages under /docs.\n" },
    { id = "api-write-26", class = "api-write", note = "beacon with text/plain JSON from navigator.sendBeacon",
      method = "POST", target = "/rum", headers = { ["User-Agent"] = UA_SAFARI, ["Content-Type"] = "text/plain;charset=UTF-8", Origin = ORIGIN },
      body = [[{"lcp":1834.2,"cls":0.03,"inp":88,"page":"/products/summer-linen-shirt?color=blue","nav":"navigate"}]] },
    { id = "api-write-27", class = "api-write", note = "POST with no body (action endpoint; a client sends Content-Length: 0)",
      method = "POST", target = "/api/v2/orders/10234/refund", headers = API() },

    ----------------------------------------------------------------- forms
    { id = "form-01", class = "form", note = "login with an email and a password full of punctuation",
      method = "POST", target = "/login", headers = chrome({ ["Content-Type"] = FORM, Origin = ORIGIN, ["Sec-Fetch-Site"] = "same-origin", Referer = ORIGIN .. "/login" }),
      body = "csrf_token=Zx8yQ2vLk9PwT4mN7bR1cS6dF3gH0jKa&email=jane.doe%40example.com&password=" .. f("P@ss'w0rd!;<3>") .. "&remember=on" },
    { id = "form-02", class = "form", note = "contact form: textarea with CR LF, apostrophes and a -- dash",
      method = "POST", target = "/contact", headers = firefox({ ["Content-Type"] = FORM, Origin = ORIGIN, Referer = ORIGIN .. "/contact" }),
      body = "name=" .. f("Pat O'Hara") .. "&email=pat%40example.com&subject=" .. f("Order question") ..
             "&message=" .. f("Hi,\r\n\r\nI'd like to order 3 units -- can you ship to O'Hare?\r\n\r\nThanks,\r\nPat") },
    { id = "form-03", class = "form", note = "signup with accented name and a hyphenated surname",
      method = "POST", target = "/signup", headers = safari({ ["Content-Type"] = FORM, Origin = ORIGIN }),
      body = "first_name=" .. f("Zo\195\171") .. "&last_name=" .. f("O'Neil-Smith") .. "&email=zoe%2Bshop%40example.com&password=" .. f("correct horse battery staple") .. "&terms=1" },
    { id = "form-04", class = "form", note = "checkout address with an apostrophe and a #",
      method = "POST", target = "/checkout/address", headers = chrome({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = "line1=" .. f("1 Rue de l'\195\137glise") .. "&line2=" .. f("Apt #4, 2nd floor") .. "&city=" .. f("Montr\195\169al") .. "&postal=H2X+1Y4&country=CA&phone=%2B1+514+555+0100" },
    { id = "form-05", class = "form", note = "blog comment in markdown with backticks and a link",
      method = "POST", target = "/blog/42/comments", headers = edge({ ["Content-Type"] = FORM }),
      body = "author=" .. f("Sam") .. "&comment=" .. f("Great post! The `SELECT` part confused me at first, but the *order by* example made it click. See https://example.org/sql-basics?ch=3&lang=en for more.") },
    { id = "form-06", class = "form", note = "newsletter form with a hidden return URL",
      method = "POST", target = "/newsletter/subscribe", headers = android({ ["Content-Type"] = FORM }),
      body = "email=ana%40example.com.br&lists%5B%5D=weekly&lists%5B%5D=offers&return=https%3A%2F%2Fshop.example.com%2Fthank-you%3Fsrc%3Dfooter" },
    { id = "form-07", class = "form", note = "product review with 5 < 6 style comparisons and an ampersand",
      method = "POST", target = "/products/42/reviews", headers = chrome({ ["Content-Type"] = FORM }),
      body = "rating=4&title=" .. f("Fits well & feels great") .. "&body=" .. f("Sizing runs small: M < L on the chart but M > L in the sleeves?! Still 4/5. Would buy again :)") },
    { id = "form-08", class = "form", note = "WordPress admin-ajax heartbeat with bracketed names",
      method = "POST", target = "/wp-admin/admin-ajax.php", headers = chrome({ ["Content-Type"] = FORM .. "; charset=UTF-8", Cookie = WP_COOKIE, ["X-Requested-With"] = "XMLHttpRequest" }),
      body = "data%5Bwp-refresh-post-lock%5D%5Bpost_id%5D=42&data%5Bwp-refresh-post-lock%5D%5Block%5D=1712398765%3A1&interval=60&_nonce=3c8d2e9f1a&action=heartbeat&screen_id=post&has_focus=false" },
    { id = "form-09", class = "form", note = "WordPress post save with HTML from the editor (paragraphs, a link, a list)",
      method = "POST", target = "/wp-admin/post.php", headers = chrome({ ["Content-Type"] = FORM, Cookie = WP_COOKIE }),
      body = "_wpnonce=3c8d2e9f1a&action=editpost&post_ID=42&post_title=" .. f("What's new in v2") ..
             "&content=" .. f("<p>We've shipped <strong>v2</strong> &amp; it's faster.</p><ul><li>New search</li><li>Dark mode</li></ul><p>Read the <a href=\"https://example.com/docs/v2/\">docs</a>.</p>") },
    { id = "form-10", class = "form", note = "search form POST with quotes and parentheses",
      method = "POST", target = "/library/search", headers = firefox({ ["Content-Type"] = FORM }),
      body = "title=" .. f("\"The Lord of the Rings\" (1954)") .. "&author=" .. f("Tolkien, J.R.R.") .. "&match=all" },
    { id = "form-11", class = "form", note = "gift card message with emoji and punctuation",
      method = "POST", target = "/cart/gift", headers = iphone({ ["Content-Type"] = FORM }),
      body = "to=" .. f("Mom & Dad") .. "&message=" .. f("Happy anniversary!!! \226\157\164\239\184\143 Love you both <3 -- J.") },
    { id = "form-12", class = "form", note = "password change with symbols that look like code",
      method = "POST", target = "/account/password", headers = chrome({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = "current=" .. f("Tr0ub4dor&3") .. "&new=" .. f("x9$K#m2!q(7)") .. "&confirm=" .. f("x9$K#m2!q(7)") },
    { id = "form-13", class = "form", note = "job application with a long cover letter paragraph",
      method = "POST", target = "/careers/apply/backend-engineer", headers = edge({ ["Content-Type"] = FORM }),
      body = "name=" .. f("Ravi Shankar") .. "&email=ravi%40example.in&cover=" .. f("I've spent 6 years on Postgres & Redis: sharding, query tuning (EXPLAIN ANALYZE is my friend), and on-call. I'd love to help scale your order pipeline.") },
    { id = "form-14", class = "form", note = "survey with many checkboxes and an 'other' text",
      method = "POST", target = "/survey/2024", headers = chrome({ ["Content-Type"] = FORM }),
      body = "q1=yes&q2%5B%5D=price&q2%5B%5D=quality&q2%5B%5D=other&q2_other=" .. f("shipping time / returns") .. "&q3=7&q4=" .. f("Keep the 'Select size' menu simpler, please!") },
    { id = "form-15", class = "form", note = "recipe submission with fractions, degrees and ranges",
      method = "POST", target = "/recipes/new", headers = safari({ ["Content-Type"] = FORM }),
      body = "title=" .. f("Mom's apple pie") .. "&ingredients=" .. f("1/2 cup sugar\r\n2-3 apples\r\n1 tsp cinnamon (or to taste)") .. "&steps=" .. f("Bake at 180\194\176C for 45-50 min; cool 10 min.") },
    { id = "form-16", class = "form", note = "multipart profile form with text parts only",
      method = "POST", target = "/account/profile", headers = chrome({ ["Content-Type"] = "multipart/form-data; boundary=----WebKitFormBoundaryQ3aXkPz9W1mB7rT2", Cookie = SESSION }),
      body = "------WebKitFormBoundaryQ3aXkPz9W1mB7rT2\r\nContent-Disposition: form-data; name=\"display_name\"\r\n\r\nJane O'Brien\r\n" ..
             "------WebKitFormBoundaryQ3aXkPz9W1mB7rT2\r\nContent-Disposition: form-data; name=\"about\"\r\n\r\nRunner, reader & home cook.\r\nI order by phone sometimes.\r\n" ..
             "------WebKitFormBoundaryQ3aXkPz9W1mB7rT2--\r\n" },
    { id = "form-17", class = "form", note = "GET form with + for spaces and an encoded apostrophe",
      method = "GET", target = "/jobs?title=front-end+developer&location=St.+John%27s%2C+NL&remote=1", headers = chrome() },
    { id = "form-18", class = "form", note = "quantity update form with array-style names",
      method = "POST", target = "/cart/update", headers = android({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = "updates%5BLIN-SHIRT-001%5D=2&updates%5BBELT-04%5D=0&note=" .. f("Gift wrap the shirt, not the belt") .. "&checkout=" },

    --------------------------------------------------------- auth, redirects
    { id = "auth-01", class = "auth", note = "OAuth callback with code, state and scopes (URLs inside)",
      method = "GET", target = "/oauth/callback?state=eyJyZXR1cm5UbyI6ICIvZGFzaGJvYXJkP3RhYj1iaWxsaW5nIiwgIm5vbmNlIjogImMyOXRaUzF1YjI1alpRIn0%3D&code=4%2F0AeaYSHBxQk2pLm9Rt7vWz3nC8fJ6hG1dK5sY0uI4oE2aT&scope=email%20profile%20openid%20https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fuserinfo.email&authuser=0&prompt=consent",
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site", Referer = "https://accounts.google.com/" }) },
    { id = "auth-02", class = "auth", note = "OAuth authorize request with redirect_uri, PKCE and nonce",
      method = "GET", target = "/authorize?response_type=code&client_id=app-42&redirect_uri=https%3A%2F%2Fapp.example.com%2Foauth%2Fcallback&scope=openid%20profile%20email%20offline_access&state=af0ifjsldkj&nonce=n-0S6_WzA2Mj&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
      headers = firefox() },
    { id = "auth-03", class = "auth", note = "OAuth token exchange (form) with code_verifier",
      method = "POST", target = "/oauth/token", headers = { ["User-Agent"] = "okhttp/4.12.0", ["Content-Type"] = FORM, Authorization = "Basic YXBwLTQyOnMzY3IzdCsvPQ==" },
      body = "grant_type=authorization_code&code=SplxlOBeZQQYbYS6WxSbIA&redirect_uri=https%3A%2F%2Fapp.example.com%2Foauth%2Fcallback&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk" },
    { id = "auth-04", class = "auth", note = "refresh token grant",
      method = "POST", target = "/oauth/token", headers = { ["User-Agent"] = "ShopApp/3.4.1 CFNetwork/1494.0.7 Darwin/23.4.0", ["Content-Type"] = FORM },
      body = "grant_type=refresh_token&refresh_token=tGzv3JOkF0XG5Qx2TlKWIA&client_id=app-42&scope=openid%20offline_access" },
    { id = "auth-05", class = "auth", note = "OIDC form_post response with an id_token",
      method = "POST", target = "/oidc/callback", headers = chrome({ ["Content-Type"] = FORM, Origin = "https://accounts.example.com", ["Sec-Fetch-Site"] = "cross-site" }),
      body = "id_token=" .. ID_TOKEN .. "&state=af0ifjsldkj&session_state=c2VzczE.abc123" },
    { id = "auth-06", class = "auth", note = "SAML HTTP-POST binding: long base64 response and RelayState URL",
      method = "POST", target = "/saml/acs", headers = edge({ ["Content-Type"] = FORM, Origin = "https://idp.example.org", ["Sec-Fetch-Site"] = "cross-site" }),
      body = "SAMLResponse=" .. f(SAML_RESPONSE) .. "&RelayState=" .. f("https://app.example.com/reports?range=last_30_days") },
    { id = "auth-07", class = "auth", note = "return_to with a full encoded https URL",
      method = "GET", target = "/login?return_to=https%3A%2F%2Fapp.example.com%2Fdashboard%3Ftab%3Dbilling%26range%3D30d", headers = chrome() },
    { id = "auth-08", class = "auth", note = "logout with an unencoded https URL in redirect=",
      method = "GET", target = "/logout?redirect=https://www.example.com/", headers = safari({ Cookie = SESSION }) },
    { id = "auth-09", class = "auth", note = "SSO continue= carrying an URL with its own query",
      method = "GET", target = "/sso/continue?continue=https://mail.example.com/mail/u/0/?ui=2&ik=abc&view=pt&service=mail", headers = chrome() },
    { id = "auth-10", class = "auth", note = "share endpoint with url and text",
      method = "GET", target = "/share?url=https%3A%2F%2Fshop.example.com%2Fp%2F42%3Fref%3Dshare&text=" .. u("Check this out! 50% off, today only"), headers = iphone() },
    { id = "auth-11", class = "auth", note = "email verification link with a JWT in the query",
      method = "GET", target = "/verify-email?token=" .. JWT, headers = android() },
    { id = "auth-12", class = "auth", note = "password reset link with a base64 uid and token",
      method = "GET", target = "/reset/MTIz/c2t7qz-8f2b1e4a9c0d7e6f5a4b3c2d1e0f9a8b/", headers = firefox() },
    { id = "auth-13", class = "auth", note = "bearer API call carrying an OIDC id_token",
      method = "GET", target = "/api/v2/me", headers = { ["User-Agent"] = "Dart/3.3 (dart:io)", Authorization = "Bearer " .. ID_TOKEN, Accept = JSON } },
    { id = "auth-14", class = "auth", note = "magic-link login with next= path and signature",
      method = "GET", target = "/auth/magic?email=jane.doe%40example.com&next=%2Fsettings%2Fbilling&sig=" .. u("q8+Xz/4Lm2k9Pd3+Wq=="), headers = chrome() },
    { id = "auth-15", class = "auth", note = "two-factor code submission",
      method = "POST", target = "/login/2fa", headers = chrome({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = "code=492731&trust_device=1&csrf_token=Zx8yQ2vLk9PwT4mN7bR1cS6dF3gH0jKa" },

    ----------------------------------------------------------------- webhooks
    { id = "webhook-01", class = "webhook", note = "Stripe payment_intent.succeeded",
      method = "POST", target = "/webhooks/stripe",
      headers = { ["User-Agent"] = "Stripe/1.0 (+https://stripe.com/docs/webhooks)", ["Content-Type"] = "application/json; charset=utf-8", ["Stripe-Signature"] = "t=1712398765,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39" },
      body = [[{"id":"evt_1P2x3y4Z5a6B7c8D","object":"event","api_version":"2024-04-10","created":1712398765,"data":{"object":{"id":"pi_3P2x3y4Z5a6B7c8D1","object":"payment_intent","amount":4999,"currency":"eur","customer":"cus_PqR8sT","description":"Order #10234 - Summer linen shirt (M) & belt","metadata":{"order_id":"10234","note":"Leave at the door, it's fine"},"receipt_email":"jane.o'brien@example.ie","status":"succeeded"}},"livemode":false,"pending_webhooks":1,"request":{"id":"req_Zx9y8W7v","idempotency_key":"8099ffd8-5f39-415b-ba66-aee1a7110cf7"},"type":"payment_intent.succeeded"}]] },
    { id = "webhook-02", class = "webhook", note = "GitHub push with commit messages holding SQL-ish words",
      method = "POST", target = "/webhooks/github",
      headers = { ["User-Agent"] = "GitHub-Hookshot/7f3e2a1", ["Content-Type"] = JSON, ["X-GitHub-Event"] = "push", ["X-GitHub-Delivery"] = "82a44f33-f4e5-48e4-be4b-a5aa089de4ba", ["X-Hub-Signature-256"] = "sha256=ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb" },
      body = [[{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","repository":{"id":1296269,"full_name":"octo-org/shop","html_url":"https://github.com/octo-org/shop"},"pusher":{"name":"jane-doe","email":"jane@example.com"},"head_commit":{"id":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","message":"Fix order by date on /orders; update README\n\nThe select box now keeps its value.\nCloses #42","timestamp":"2024-04-08T12:15:00+02:00","url":"https://github.com/octo-org/shop/commit/59b20b8","added":["docs/v1.2/intro.md"],"modified":["src/orders.js","README.md"],"removed":[]}}]] },
    { id = "webhook-03", class = "webhook", note = "Slack slash command (form) with a response_url",
      method = "POST", target = "/slack/commands",
      headers = { ["User-Agent"] = "Slackbot 1.0 (+https://api.slack.com/robots)", ["Content-Type"] = FORM, ["X-Slack-Request-Timestamp"] = "1712398765", ["X-Slack-Signature"] = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503" },
      body = "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&team_domain=example&channel_id=C2147483705&channel_name=general&user_id=U2147483697&user_name=jane&command=%2Forder&text=" .. f("status 10234 & notify @sean") .. "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678&trigger_id=13345224609.738474920.8088930838d88f008e0" },
    { id = "webhook-04", class = "webhook", note = "Slack interactivity: JSON inside a form field",
      method = "POST", target = "/slack/actions",
      headers = { ["User-Agent"] = "Slackbot 1.0 (+https://api.slack.com/robots)", ["Content-Type"] = FORM },
      body = "payload=" .. f([[{"type":"block_actions","user":{"id":"U2147483697","username":"jane"},"actions":[{"action_id":"approve","block_id":"refund","value":"order_10234","type":"button"}],"response_url":"https://hooks.slack.com/actions/T0001/123/abc"}]]) },
    { id = "webhook-05", class = "webhook", note = "Twilio inbound SMS with + phone numbers and a question",
      method = "POST", target = "/twilio/sms",
      headers = { ["User-Agent"] = "TwilioProxy/1.1", ["Content-Type"] = FORM, ["X-Twilio-Signature"] = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=" },
      body = "ToCountry=US&ToState=CA&SmsMessageSid=SM1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d&NumMedia=0&From=%2B15558675310&Body=" .. f("Can I change my order? It's #10234 - wrong size (M not L) :(") .. "&To=%2B15550100123&AccountSid=AC1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d&ApiVersion=2010-04-01" },
    { id = "webhook-06", class = "webhook", note = "Shopify orders/create with HMAC header",
      method = "POST", target = "/webhooks/shopify/orders-create",
      headers = { ["User-Agent"] = "Shopify-Captain-Hook", ["Content-Type"] = JSON, ["X-Shopify-Topic"] = "orders/create", ["X-Shopify-Hmac-Sha256"] = "PiPoFgA5WUoziU9lZOGxNIu9egCI1CxKy3PurtWcAJ0=", ["X-Shopify-Shop-Domain"] = "shop-example.myshopify.com" },
      body = [[{"id":820982911946154500,"email":"jane@example.com","created_at":"2024-04-08T10:15:00-04:00","total_price":"68.99","currency":"USD","note":"Please gift wrap - it's a surprise!","line_items":[{"title":"Summer Linen Shirt","variant_title":"M / Sky Blue","quantity":1,"price":"49.99"}],"shipping_address":{"address1":"123 Union St","city":"San Francisco","province_code":"CA"},"tags":"vip, repeat-customer"}]] },
    { id = "webhook-07", class = "webhook", note = "SendGrid event batch: a JSON array with user agents and URLs",
      method = "POST", target = "/webhooks/sendgrid",
      headers = { ["User-Agent"] = "SendGrid Event API", ["Content-Type"] = JSON },
      body = [=[[{"email":"jane@example.com","timestamp":1712398765,"event":"open","useragent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148","ip":"192.0.2.44","sg_event_id":"ZGVsaXZlcmVkLTAtMjQ","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"},{"email":"sean@example.ie","timestamp":1712398790,"event":"click","url":"https://shop.example.com/collections/summer?utm_source=email&utm_campaign=spring_sale_2024","url_offset":{"index":0,"type":"html"}}]]=] },
    { id = "webhook-08", class = "webhook", note = "Mailgun inbound email: quoted reply with <addresses> and > lines",
      method = "POST", target = "/webhooks/mailgun/inbound",
      headers = { ["User-Agent"] = "mailgun/treq-22.2.0", ["Content-Type"] = FORM },
      body = "recipient=support%40shop.example.com&sender=jane%40example.com&from=" .. f("Jane O'Brien <jane@example.com>") .. "&subject=" .. f("Re: Your order #10234") ..
             "&body-plain=" .. f("Yes, please swap it for an M.\r\n\r\nOn Mon, Apr 8, 2024 at 10:15 AM Shop <support@shop.example.com> wrote:\r\n> Hi Jane,\r\n> Would you like an exchange or a refund?\r\n>\r\n> -- \r\n> The Shop team") ..
             "&timestamp=1712398765&token=c2a4f6e8b0d1f3a5c7e9b1d3f5a7c9e1&signature=8d2b4f6a0c1e3a5b7d9f1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a" },
    { id = "webhook-09", class = "webhook", note = "PagerDuty v3 incident event",
      method = "POST", target = "/webhooks/pagerduty",
      headers = { ["User-Agent"] = "PagerDuty-Webhook/V3.0", ["Content-Type"] = JSON, ["X-PagerDuty-Signature"] = "v1=ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb" },
      body = [[{"event":{"id":"01DEN2HGBJGFW1UJV3BAX5QAOF","event_type":"incident.triggered","resource_type":"incident","occurred_at":"2024-04-08T10:15:00.000Z","data":{"id":"PGR0VU2","type":"incident","title":"High error rate on /api/v2/orders (5xx > 2% for 5 min)","urgency":"high","html_url":"https://example.pagerduty.com/incidents/PGR0VU2"}}}]] },
    { id = "webhook-10", class = "webhook", note = "Alertmanager notification with label matchers",
      method = "POST", target = "/hooks/alertmanager",
      headers = { ["User-Agent"] = "Alertmanager/0.27.0", ["Content-Type"] = JSON },
      body = [[{"version":"4","status":"firing","receiver":"ops","groupLabels":{"alertname":"DiskFull"},"alerts":[{"status":"firing","labels":{"alertname":"DiskFull","instance":"db-1:9100","severity":"page"},"annotations":{"summary":"Disk usage > 90% on db-1","description":"Free space is 7% on /var/lib/postgresql; consider running VACUUM or deleting old WAL."},"startsAt":"2024-04-08T10:15:00Z","generatorURL":"http://prometheus:9090/graph?g0.expr=node_filesystem_avail_bytes%7Bmountpoint%3D%22%2F%22%7D+%3C+0.1"}]}]] },

    ------------------------------------------------------------------ graphql
    { id = "graphql-01", class = "graphql", note = "simplest query with braces and parentheses",
      method = "POST", target = "/graphql", headers = xhr({ ["Content-Type"] = JSON }),
      body = [[{"query":"query { user(id: 5) { name } }"}]] },
    { id = "graphql-02", class = "graphql", note = "named query with variables and a fragment spread ...",
      method = "POST", target = "/graphql", headers = xhr({ ["Content-Type"] = JSON }),
      body = [[{"operationName":"GetOrders","query":"query GetOrders($first: Int!, $after: String, $status: OrderStatus) { viewer { orders(first: $first, after: $after, status: $status) { edges { node { ...OrderFields } } pageInfo { hasNextPage endCursor } } } } fragment OrderFields on Order { id number total { amount currency } createdAt }","variables":{"first":50,"after":null,"status":"OPEN"}}]] },
    { id = "graphql-03", class = "graphql", note = "mutation with an input object and markdown text",
      method = "POST", target = "/graphql", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"query":"mutation CreateIssue($input: CreateIssueInput!) { createIssue(input: $input) { issue { id number url } } }","variables":{"input":{"repositoryId":"R_kgDOAbCdEf","title":"Sorting by date doesn't work","body":"Steps:\n1. Open `/orders`\n2. Click *Date*\n\nExpected: newest first. Actual: random order.","labelIds":["LA_kwDOAbc"]}}}]] },
    { id = "graphql-04", class = "graphql", note = "GraphQL over HTTP GET with an encoded query",
      method = "GET", target = "/graphql?query=" .. u("{ viewer { login name } }"), headers = API({ Accept = "application/graphql-response+json, application/json;q=0.9" }) },
    { id = "graphql-05", class = "graphql", note = "GET with operationName and variables JSON",
      method = "GET", target = "/graphql?operationName=Product&query=" .. u("query Product($id: ID!) { product(id: $id) { title price } }") .. "&variables=" .. u([[{"id":"gid://shop/Product/42"}]]),
      headers = xhr() },
    { id = "graphql-06", class = "graphql", note = "Apollo persisted query GET with extensions JSON",
      method = "GET", target = "/graphql?operationName=GetProduct&variables=" .. u([[{"handle":"summer-linen-shirt"}]]) .. "&extensions=" .. u([[{"persistedQuery":{"version":1,"sha256Hash":"ecf4edb46db40b5132295c0291d62fb65d6759a9eedfa4d5d612dd5ec54a6b38"}}]]),
      headers = xhr({ ["apollographql-client-name"] = "web", ["apollographql-client-version"] = "2.14.0" }) },
    { id = "graphql-07", class = "graphql", note = "batched queries as a JSON array",
      method = "POST", target = "/graphql", headers = xhr({ ["Content-Type"] = JSON }),
      body = [=[[{"query":"{ cart { id lines { quantity } } }"},{"query":"query($q: String!) { search(query: $q, first: 5) { title } }","variables":{"q":"select a shirt from our summer collection"}}]]=] },
    { id = "graphql-08", class = "graphql", note = "GitHub search query inside GraphQL variables",
      method = "POST", target = "/graphql", headers = API({ ["Content-Type"] = JSON }),
      body = [[{"query":"query($q: String!) { search(query: $q, type: ISSUE, first: 20) { issueCount nodes { ... on Issue { number title } } } }","variables":{"q":"repo:octo-org/shop is:issue is:open label:bug sort:updated-desc"}}]] },
    { id = "graphql-09", class = "graphql", note = "Hasura-style where / order_by / _eq arguments",
      method = "POST", target = "/v1/graphql", headers = API({ ["Content-Type"] = JSON, ["x-hasura-role"] = "user" }),
      body = [[{"query":"query OpenOrders { orders(where: {status: {_eq: \"open\"}, total: {_gte: 100}}, order_by: {created_at: desc}, limit: 50) { id total customer { name } } }"}]] },
    { id = "graphql-10", class = "graphql", note = "application/graphql body with sort keys and reverse",
      method = "POST", target = "/api/2024-04/graphql.json", headers = { ["User-Agent"] = "Shopify CLI; v=3.58.2", ["Content-Type"] = "application/graphql", ["X-Shopify-Storefront-Access-Token"] = "dd4d4dc146542ba7763305d71d1b3d38" },
      body = "query { products(first: 10, sortKey: PRICE, reverse: true, query: \"tag:summer AND available_for_sale:true\") { edges { node { title handle } } } }" },
    { id = "graphql-11", class = "graphql", note = "introspection query from a GraphQL IDE",
      method = "POST", target = "/graphql", headers = chrome({ ["Content-Type"] = JSON, Accept = JSON, ["Sec-Fetch-Mode"] = "cors", ["Sec-Fetch-Dest"] = "empty" }),
      body = [[{"operationName":"IntrospectionQuery","query":"query IntrospectionQuery { __schema { queryType { name } mutationType { name } types { kind name fields(includeDeprecated: true) { name args { name } } } } }"}]] },

    ------------------------------------------ HEAD, OPTIONS, conditional, range
    { id = "http-01", class = "http", note = "HEAD of the home page (uptime check)",
      method = "HEAD", target = "/", headers = { ["User-Agent"] = "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", Accept = "*/*" } },
    { id = "http-02", class = "http", note = "HEAD of a dotted download before fetching it",
      method = "HEAD", target = "/downloads/report.v1.2.pdf", headers = { ["User-Agent"] = "Wget/1.21.4", Accept = "*/*" } },
    { id = "http-03", class = "http", note = "CORS preflight for PATCH with custom headers",
      method = "OPTIONS", target = "/api/v2/orders/10234",
      headers = { ["User-Agent"] = UA_CHROME, Accept = "*/*", Origin = "https://app.example.com", ["Access-Control-Request-Method"] = "PATCH",
                  ["Access-Control-Request-Headers"] = "authorization,content-type,x-requested-with,idempotency-key", ["Sec-Fetch-Mode"] = "cors", ["Sec-Fetch-Site"] = "same-site", ["Sec-Fetch-Dest"] = "empty" } },
    { id = "http-04", class = "http", note = "CORS preflight for DELETE from Firefox",
      method = "OPTIONS", target = "/api/v2/users/123/sessions/3f9a1c0e7b2d",
      headers = { ["User-Agent"] = UA_FIREFOX, Accept = "*/*", Origin = "https://app.example.com", ["Access-Control-Request-Method"] = "DELETE", ["Access-Control-Request-Headers"] = "authorization" } },
    { id = "http-05", class = "http", note = "CORS preflight for a GraphQL POST with JSON",
      method = "OPTIONS", target = "/graphql", headers = { ["User-Agent"] = UA_SAFARI, Origin = "https://studio.example.com", ["Access-Control-Request-Method"] = "POST", ["Access-Control-Request-Headers"] = "content-type,apollographql-client-name" } },
    { id = "http-06", class = "http", note = "conditional GET with a weak and a strong ETag",
      method = "GET", target = "/api/v2/products/42", headers = API({ ["If-None-Match"] = [[W/"5f3e-17a2b", "xyzzy"]] }) },
    { id = "http-07", class = "http", note = "conditional GET with If-Modified-Since",
      method = "GET", target = "/static/css/main.8c2e1f07.css", headers = asset("style", "text/css,*/*;q=0.1", { ["If-Modified-Since"] = "Wed, 21 Oct 2015 07:28:00 GMT", ["Cache-Control"] = "max-age=0" }) },
    { id = "http-08", class = "http", note = "range request, first KiB",
      method = "GET", target = "/downloads/report.v1.2.pdf", headers = { ["User-Agent"] = UA_CHROME, Accept = "*/*", Range = "bytes=0-1023" } },
    { id = "http-09", class = "http", note = "resume download with an open-ended range and If-Range",
      method = "GET", target = "/downloads/installer-2.4.1.dmg", headers = { ["User-Agent"] = UA_SAFARI, Range = "bytes=1048576-", ["If-Range"] = [["a1b2c3d4"]] } },
    { id = "http-10", class = "http", note = "suffix range (last 500 bytes)",
      method = "GET", target = "/logs/export.ndjson", headers = { ["User-Agent"] = "curl/8.5.0", Range = "bytes=-500" } },
    { id = "http-11", class = "http", note = "multi-range request",
      method = "GET", target = "/media/intro-1080p.mp4", headers = { ["User-Agent"] = UA_FIREFOX, Range = "bytes=0-99,200-299,1000-" } },
    { id = "http-12", class = "http", note = "no-cache reload with Pragma and Cache-Control",
      method = "GET", target = "/products/summer-linen-shirt", headers = chrome({ ["Cache-Control"] = "no-cache", Pragma = "no-cache" }) },
    { id = "http-13", class = "http", note = "If-Match guarded PUT",
      method = "PUT", target = "/api/v2/documents/readme", headers = API({ ["Content-Type"] = JSON, ["If-Match"] = [["v7-3f9a1c"]] }),
      body = [[{"title":"README","body":"Updated by Jane."}]] },
    { id = "http-14", class = "http", note = "If-Unmodified-Since guarded DELETE",
      method = "DELETE", target = "/api/v2/documents/draft-17", headers = API({ ["If-Unmodified-Since"] = "Mon, 08 Apr 2024 08:15:00 GMT" }) },
    { id = "http-15", class = "http", note = "Expect: 100-continue upload",
      method = "PUT", target = "/api/v2/files/backup-2024-04-08.tar.gz", headers = { ["User-Agent"] = "curl/8.5.0", ["Content-Type"] = "application/gzip", Expect = "100-continue" },
      body = "H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ43oAAAAAAAAAAAAIB3A5LLGQ4AKAAA" },

    -------------------------------------------------------- non-browser clients
    { id = "client-01", class = "client", note = "Googlebot smartphone crawling a product",
      method = "GET", target = "/products/summer-linen-shirt", headers = { ["User-Agent"] = "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Accept = ACCEPT_CHROME, From = "googlebot(at)googlebot.com" } },
    { id = "client-02", class = "client", note = "Bingbot",
      method = "GET", target = "/collections/summer", headers = { ["User-Agent"] = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", Accept = "*/*" } },
    { id = "client-03", class = "client", note = "Facebook link preview crawler",
      method = "GET", target = "/p/42?ref=share", headers = { ["User-Agent"] = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", Accept = "*/*", Range = "bytes=0-524287" } },
    { id = "client-04", class = "client", note = "Slack link unfurl",
      method = "GET", target = "/blog/2024/04/what%27s-new-in-v2", headers = { ["User-Agent"] = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Accept = "*/*" } },
    { id = "client-05", class = "client", note = "curl from a developer",
      method = "GET", target = "/api/v2/status", headers = { ["User-Agent"] = "curl/8.5.0", Accept = "*/*" } },
    { id = "client-06", class = "client", note = "python-requests integration",
      method = "GET", target = "/api/v2/products?updated_since=2024-04-01", headers = { ["User-Agent"] = "python-requests/2.31.0", Accept = "*/*", ["Accept-Encoding"] = "gzip, deflate", Authorization = "Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b" } },
    { id = "client-07", class = "client", note = "Kubernetes liveness probe",
      method = "GET", target = "/healthz", headers = { ["User-Agent"] = "kube-probe/1.29", Accept = "*/*" } },
    { id = "client-08", class = "client", note = "AWS ELB health check",
      method = "GET", target = "/health?deep=false", headers = { ["User-Agent"] = "ELB-HealthChecker/2.0" } },
    { id = "client-09", class = "client", note = "Prometheus scrape",
      method = "GET", target = "/metrics", headers = { ["User-Agent"] = "Prometheus/2.51.1", Accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", ["X-Prometheus-Scrape-Timeout-Seconds"] = "10" } },
    { id = "client-10", class = "client", note = "Java/okhttp Android app",
      method = "GET", target = "/api/v2/home?lat=-23.5614&lng=-46.6559&locale=pt_BR", headers = { ["User-Agent"] = "okhttp/4.12.0", Accept = JSON, Authorization = "Bearer " .. JWT } },
    { id = "client-11", class = "client", note = "Go client with a no-store header",
      method = "GET", target = "/api/v2/config", headers = { ["User-Agent"] = "Go-http-client/1.1", ["Cache-Control"] = "no-store" } },
    { id = "client-12", class = "client", note = "Postman during development",
      method = "POST", target = "/api/v2/echo", headers = { ["User-Agent"] = "PostmanRuntime/7.37.3", Accept = "*/*", ["Postman-Token"] = "8099ffd8-5f39-415b-ba66-aee1a7110cf7", ["Content-Type"] = JSON },
      body = [[{"hello":"world","n":1,"ok":true}]] },
    { id = "client-13", class = "client", note = "Applebot",
      method = "GET", target = "/", headers = { ["User-Agent"] = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)" } },
    { id = "client-14", class = "client", note = "Windows PowerShell Invoke-WebRequest",
      method = "GET", target = "/downloads/tools/setup-2.4.1.msi", headers = { ["User-Agent"] = "Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) WindowsPowerShell/5.1.22621.2506" } },

    --------------------------------------------------- long but ordinary
    { id = "long-01", class = "long", note = "JSON order of about 2 KiB with 10 line items",
      method = "POST", target = "/api/v2/orders", headers = API({ ["Content-Type"] = JSON }), body = BIG_ORDER },
    { id = "long-02", class = "long", note = "listing page with a query string of over 1,500 bytes (facets, utm, gclid, cursor)",
      method = "GET", target = "/shop/womens/dresses?" .. FACETS, headers = chrome({ Cookie = GA }) },
    { id = "long-03", class = "long", note = "GA4 collect beacon with 60 arguments (one value holds %2520)",
      method = "POST", target = "/g/collect?" .. table.concat(GA4_PARAMS, "&"),
      headers = { ["User-Agent"] = UA_CHROME, Accept = "*/*", Origin = ORIGIN, Referer = ORIGIN .. "/", ["Content-Type"] = "text/plain;charset=UTF-8", ["Sec-Fetch-Mode"] = "no-cors" },
      body = "" },
    { id = "long-04", class = "long", note = "settings form with 120 fields",
      method = "POST", target = "/account/notifications", headers = chrome({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = (function()
          local t = {}
          for i = 1, 120 do t[i] = string.format("settings%%5Bnotify%%5D%%5Btopic_%03d%%5D=%s", i, i % 3 == 0 and "off" or "on") end
          return table.concat(t, "&")
      end)() },
    { id = "long-05", class = "long", note = "contact textarea of about 4 KiB with CR LF, quotes, -- and 100%",
      method = "POST", target = "/contact", headers = safari({ ["Content-Type"] = FORM }),
      body = "name=" .. f("Jane O'Brien") .. "&email=jane%40example.com&message=" .. f(LONG_TEXT) },
    { id = "long-06", class = "long", note = "JSON array of 100 rows (about 12 KiB)",
      method = "PUT", target = "/api/v2/lists/7/items", headers = API({ ["Content-Type"] = JSON }), body = many_rows(100) },
    { id = "long-07", class = "long", note = "Cookie header of about 2 KiB from a dozen trackers and apps",
      method = "GET", target = "/account", headers = chrome({ Cookie = COOKIE_2K }) },
    { id = "long-08", class = "long", note = "Referer of about 0.9 KiB from a Google Ads click",
      method = "GET", target = "/collections/summer?utm_source=google&utm_medium=cpc&utm_campaign=summer_2024_search&utm_term=linen%2520shirt&gad_source=1",
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site", Referer = REFERER_1K }) },
    { id = "long-09", class = "long", note = "OAuth state argument of about 3 KiB (base64 JSON)",
      method = "GET", target = "/oauth/callback?code=SplxlOBeZQQYbYS6WxSbIA&state=" .. u(("eyJyZXR1cm5UbyI6ICIvZGFzaGJvYXJkP3RhYj1iaWxsaW5nIiwgIm5vbmNlIjogImMyOXRaUzF1YjI1alpRIn0"):rep(35) .. "="),
      headers = chrome({ ["Sec-Fetch-Site"] = "cross-site" }) },
    { id = "long-10", class = "long", note = "long but ordinary argument names (bracketed paths of 60+ bytes)",
      method = "POST", target = "/admin/products/42", headers = chrome({ ["Content-Type"] = FORM, Cookie = SESSION }),
      body = "product%5Bvariants_attributes%5D%5B0%5D%5Bshipping_profile_attributes%5D%5Bdimensions%5D%5Bheight_cm%5D=3" ..
             "&product%5Bvariants_attributes%5D%5B0%5D%5Bshipping_profile_attributes%5D%5Bdimensions%5D%5Bwidth_cm%5D=30" ..
             "&product%5Bseo_attributes%5D%5Bmeta_description%5D=" .. f("Light, breathable linen shirt - perfect for summer. Free returns within 30 days.") },
}

return requests
