-- mail-bridge push hook: Dovecot push_notification Lua driver -> Redis Stream.
--
-- Loaded by Dovecot 2.3's push_notification_lua plugin for lmtp and imap (see dovecot-conf/).
-- Contract:
--   * Every mail-store event of a committed transaction becomes one msgpack event (docs/events.md),
--     XADDed to the stream named by mail_bridge_stream, in transaction order, pipelined.
--   * Never fails a delivery or an IMAP command: every step is protected, and the whole Redis
--     exchange is bounded by mail_bridge_timeout_msecs (default 250 ms) per transaction.
--   * Never loses an event: when Redis cannot take them, the transaction's events are written to a
--     spool file (created as .tmp, renamed to .mp when complete) that the bridge drains in order.
--     While a PENDING marker exists in the spool, new events go to the spool too, so order holds.
--   * On Redis Cluster, follows a MOVED reply to the node that holds the stream's slot (and
--     remembers it); the stream name must carry the bridge's hash tag ({mail}:dovecot).
--   * With Redis Sentinel (mail_bridge_redis_sentinels), publishes to the master the sentinels name,
--     remembered while this script lives and asked again when a publish fails (a failover),
--     within the same time bound; while no master is known, events are spooled as above.
--   * Host names (of Redis, the sentinels, the masters they name) are resolved by the hook itself
--     (/etc/hosts, then DNS) within the same time bound and cached while this script lives: a slow
--     or dead resolver never stalls a delivery.
--   * "While this script lives": push_notification_lua loads the script once per mail user, so what
--     it remembers lasts an IMAP session, and one delivery in LMTP (not the process).
-- Settings (plugin { } block): mail_bridge_redis_host, mail_bridge_redis_port,
-- mail_bridge_redis_password, mail_bridge_redis_db, mail_bridge_redis_sentinels (host:port list,
-- space or comma separated; replaces host and port), mail_bridge_redis_master (the sentinels'
-- service name), mail_bridge_redis_sentinel_password, mail_bridge_stream, mail_bridge_stream_maxlen,
-- mail_bridge_spool_dir, mail_bridge_timeout_msecs, mail_bridge_dns_servers (address[:port] list; the
-- DNS servers asked for the names above, default those of /etc/resolv.conf).
-- Dovecot push_notification events: RFC 5423 names; Lua API: Dovecot 2.3 admin manual, "Lua".
-- This runs inside the lmtp/imap process as the mail user, so it only needs lua-socket.

local has_socket, socket = pcall(require, "socket")

local SCHEMA_VERSION = 1
local MAX_TEXT = 4096 -- bytes kept of a raw header value (a To: with thousands of recipients)

-- ---------------------------------------------------------------- logging (never log mail content)

local function log_error(msg)
  if dovecot and dovecot.i_error then pcall(dovecot.i_error, "mail-bridge: " .. msg) end
end

local function log_warning(msg)
  if dovecot and dovecot.i_warning then pcall(dovecot.i_warning, "mail-bridge: " .. msg) end
end

-- Events that neither Redis nor the spool took are gone: say so loudly, and count them where no
-- disk and no Redis is needed, in Dovecot's own statistics (Dovecot 2.3 "Statistics"): one
-- `mail_bridge_events_lost` event per lost event, which the metric of the same name in
-- dovecot-conf/90-mail-bridge.conf counts and Dovecot's OpenMetrics listener exports.
local function lost(count, why)
  log_error(string.format("LOST %d event(s): %s", count, why))
  if not (dovecot and dovecot.event) then return end
  pcall(function()
    local ev = dovecot.event()
    ev:set_name("mail_bridge_events_lost")
    for _ = 1, count do ev:log_debug("mail-bridge: event lost") end
  end)
end

-- ---------------------------------------------------------------- values

-- Dovecot pushes numbers with lua_pushnumber: they arrive as floats (uid 6 is 6.0).
local function int(v)
  if type(v) ~= "number" then return nil end
  return math.tointeger(v) or math.tointeger(math.floor(v))
end

-- The length of the well-formed UTF-8 sequence at byte i of s (Unicode 15.0, table 3-7), or nil and
-- the length of its maximal ill-formed subpart (Unicode 15.0, 3.9 "U+FFFD Substitution of Maximal
-- Subparts", what Python's decode(errors="replace") does too). The table is checked here, byte by byte,
-- rather than trusted to the Lua version's utf8.len: Lua 5.3's accepts encoded surrogates
-- (U+D800..U+DFFF, bytes ED A0..BF), which are not UTF-8 and which strict decoders refuse.
local function utf8_sequence(s, i)
  local b = s:byte(i)
  if b < 0x80 then return 1 end
  local n, lo, hi
  if b >= 0xC2 and b <= 0xDF then n, lo, hi = 1, 0x80, 0xBF
  elseif b == 0xE0 then n, lo, hi = 2, 0xA0, 0xBF -- no overlong forms
  elseif b == 0xED then n, lo, hi = 2, 0x80, 0x9F -- no surrogates
  elseif b >= 0xE1 and b <= 0xEF then n, lo, hi = 2, 0x80, 0xBF
  elseif b == 0xF0 then n, lo, hi = 3, 0x90, 0xBF -- no overlong forms
  elseif b >= 0xF1 and b <= 0xF3 then n, lo, hi = 3, 0x80, 0xBF
  elseif b == 0xF4 then n, lo, hi = 3, 0x80, 0x8F -- nothing past U+10FFFF
  else return nil, 1 end -- 80..C1, F5..FF never start a character
  for k = 1, n do
    local c = s:byte(i + k)
    if c == nil or c < lo or c > hi then return nil, k end
    lo, hi = 0x80, 0xBF
  end
  return n + 1
end

-- Replace what is not well-formed UTF-8 (8-bit junk in raw headers, encoded surrogates) with U+FFFD,
-- so every consumer can decode the string; cut over-long values first.
local function text(s, limit)
  if s == nil then return nil end
  s = tostring(s)
  limit = limit or MAX_TEXT
  if #s > limit then s = s:sub(1, limit) end
  if not s:find("[\x80-\xff]") then return s end
  local out, i, start = {}, 1, 1
  while i <= #s do
    local good, bad = utf8_sequence(s, i)
    if good then
      i = i + good
    else
      out[#out + 1] = s:sub(start, i - 1)
      out[#out + 1] = "\u{FFFD}"
      i = i + bad
      start = i
    end
  end
  out[#out + 1] = s:sub(start)
  return table.concat(out)
end

local ARRAY = {} -- metatable marking a table to encode as a msgpack array (even when empty)

local function array(t)
  return setmetatable(t or {}, ARRAY)
end

-- System flags and keywords, without \Recent (session-local, RFC 3501 2.3.2): arrays of strings.
local function flag_list(list)
  local out = array()
  if type(list) ~= "table" then return out end
  for _, f in ipairs(list) do
    if f ~= "\\Recent" then out[#out + 1] = text(f, 256) end
  end
  return out
end

-- ---------------------------------------------------------------- msgpack writer (spec: msgpack.org)

local pack = string.pack

local function mp_encode(v, out)
  local t = type(v)
  if t == "nil" then
    out[#out + 1] = "\xc0"
  elseif t == "boolean" then
    out[#out + 1] = v and "\xc3" or "\xc2"
  elseif t == "number" then
    local i = math.tointeger(v)
    if i == nil then
      out[#out + 1] = pack(">Bd", 0xcb, v)
    elseif i >= 0 then
      if i < 0x80 then out[#out + 1] = pack("B", i)
      elseif i < 0x100 then out[#out + 1] = pack(">BB", 0xcc, i)
      elseif i < 0x10000 then out[#out + 1] = pack(">BI2", 0xcd, i)
      elseif i < 0x100000000 then out[#out + 1] = pack(">BI4", 0xce, i)
      else out[#out + 1] = pack(">Bi8", 0xcf, i) end
    else
      if i >= -32 then out[#out + 1] = pack("b", i)
      elseif i >= -0x80 then out[#out + 1] = pack(">Bb", 0xd0, i)
      elseif i >= -0x8000 then out[#out + 1] = pack(">Bi2", 0xd1, i)
      elseif i >= -0x80000000 then out[#out + 1] = pack(">Bi4", 0xd2, i)
      else out[#out + 1] = pack(">Bi8", 0xd3, i) end
    end
  elseif t == "string" then
    local n = #v
    if n < 32 then out[#out + 1] = pack("B", 0xa0 + n)
    elseif n < 0x100 then out[#out + 1] = pack(">BB", 0xd9, n)
    elseif n < 0x10000 then out[#out + 1] = pack(">BI2", 0xda, n)
    else out[#out + 1] = pack(">BI4", 0xdb, n) end
    out[#out + 1] = v
  elseif t == "table" then
    if getmetatable(v) == ARRAY then
      local n = #v
      if n < 16 then out[#out + 1] = pack("B", 0x90 + n)
      elseif n < 0x10000 then out[#out + 1] = pack(">BI2", 0xdc, n)
      else out[#out + 1] = pack(">BI4", 0xdd, n) end
      for k = 1, n do mp_encode(v[k], out) end
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys) -- deterministic bytes: the same event always encodes the same way
      local n = #keys
      if n < 16 then out[#out + 1] = pack("B", 0x80 + n)
      else out[#out + 1] = pack(">BI2", 0xde, n) end
      for _, k in ipairs(keys) do
        mp_encode(k, out)
        mp_encode(v[k], out)
      end
    end
  else
    error("cannot encode a " .. t)
  end
end

local function msgpack(v)
  local out = {}
  mp_encode(v, out)
  return table.concat(out)
end

-- ---------------------------------------------------------------- time and keys

local function now_us()
  if has_socket then return math.floor(socket.gettime() * 1000000) end
  return os.time() * 1000000
end

-- A transaction's id starts with its clock (microseconds, hex), the same clock as its events' ts:
-- consumers order flag changes within a millisecond by it (docs/events.md, "Order").
local function txn_id(us)
  return string.format("%x-%08x", us, math.random(0, 0x7fffffff))
end

-- ---------------------------------------------------------------- transaction

local function setting(user, key, default)
  local ok, value = pcall(function() return user:plugin_getenv("mail_bridge_" .. key) end)
  if not ok or value == nil or value == "" then return default end
  return value
end

function script_init()
  return 0
end

function script_deinit()
end

function dovecot_lua_notify_begin_txn(user)
  local us = now_us()
  return {
    account = user.username,
    id = txn_id(us),
    ts = us // 1000,
    events = {},
    seen = {}, -- "mailbox\0uid\0flag" -> true, to fold MessageRead/MessageTrash into FlagsSet
    folded = {}, -- MessageRead/MessageTrash awaiting a matching FlagsSet
    cfg = {
      host = setting(user, "redis_host", "127.0.0.1"),
      port = tonumber(setting(user, "redis_port", "6379")),
      password = setting(user, "redis_password", nil),
      db = tonumber(setting(user, "redis_db", "0")),
      stream = setting(user, "stream", "mail:dovecot"),
      maxlen = setting(user, "stream_maxlen", "1000000"),
      spool = setting(user, "spool_dir", "/var/spool/mail-bridge"),
      timeout = (tonumber(setting(user, "timeout_msecs", "250")) or 250) / 1000,
      sentinels = setting(user, "redis_sentinels", nil),
      master = setting(user, "redis_master", "mymaster"),
      sentinel_password = setting(user, "redis_sentinel_password", nil),
      dns_servers = setting(user, "dns_servers", nil),
    },
  }
end

local function base(ctx, kind, ev)
  return {
    v = SCHEMA_VERSION,
    kind = kind,
    ts = ctx.ts,
    account = text(ctx.account, 512),
    mailbox = text(ev.mailbox, 1024),
  }
end

local function message(ctx, kind, ev)
  local e = base(ctx, kind, ev)
  e.uidvalidity = int(ev.uid_validity)
  e.uid = int(ev.uid)
  -- One UID is assigned once per (mailbox, UIDVALIDITY) (RFC 3501 2.3.1.1): a stable key.
  -- UID 0 means "not assigned yet" (maildir saving while another process holds dovecot-uidlist):
  -- then the key names the occurrence instead (set by add()).
  if e.uid ~= 0 then
    e.key = string.format("dovecot:%s:%s:%s:%d:%d", kind, e.account, e.mailbox, e.uidvalidity, e.uid)
  end
  return e
end

local function add(ctx, e)
  if e.key == nil then e.key = string.format("dovecot:%s.%d", ctx.id, #ctx.events + 1) end
  ctx.events[#ctx.events + 1] = e
end

-- A header value as Dovecot hands it is still folded (RFC 5322 2.2.3: a long header line goes on
-- over CRLF + whitespace). Unfold it and trim the ends, so e.g. a Message-ID folded onto its own
-- line reads "<id@host>", the same as the content filter reports it.
local function header(s, limit)
  if s == nil then return nil end
  s = tostring(s):gsub("\r?\n([ \t])", "%1"):gsub("^%s+", ""):gsub("%s+$", "")
  return text(s, limit)
end

local function added(ctx, kind, ev)
  local e = message(ctx, kind, ev)
  e.from = header(ev.from)
  e.from_address = text(ev.from_address, 512)
  e.from_name = text(ev.from_display_name, 512)
  e.to = header(ev.to)
  e.to_address = text(ev.to_address, 512)
  e.to_name = text(ev.to_display_name, 512)
  e.subject = header(ev.subject, 2048)
  e.snippet = text(ev.snippet, 1024)
  e.message_id = header(ev.message_id, 1024)
  local date = int(ev.date)
  if date ~= nil and date ~= 0 then e.date = date end -- 0 means "no Date header"
  e.tz = int(ev.tz) or 0
  e.flags = flag_list(ev.flags)
  e.keywords = flag_list(ev.keywords)
  add(ctx, e)
end

local function flags_changed(ctx, kind, ev)
  local flags, keywords = flag_list(ev.flags), flag_list(ev.keywords)
  -- Dovecot sends FlagsSet and FlagsClear in pairs, one of them usually empty: drop the empty one.
  if #flags == 0 and #keywords == 0 then return end
  local e = message(ctx, kind, ev)
  e.key = nil -- flags change back and forth: key the occurrence, not the message
  e.flags = flags
  e.keywords = keywords
  if kind == "flags.set" then
    for _, f in ipairs(flags) do ctx.seen[string.format("%s\0%d\0%s", e.mailbox, e.uid, f)] = true end
  end
  add(ctx, e)
end

local function folded(ctx, flag, ev)
  ctx.folded[#ctx.folded + 1] = { flag = flag, ev = ev }
end

local function mailbox_event(ctx, kind, ev)
  local e = base(ctx, kind, ev)
  if kind == "mailbox.rename" then e.old_mailbox = text(ev.mailbox_old, 1024) end
  add(ctx, e)
end

-- A handler's error must not reach Dovecot (it would be logged per event, and the event lost quietly).
-- `arg` (optional) is passed between ctx and the event: handler(ctx, arg, ev) or handler(ctx, ev).
local function guard(name, fn, arg)
  return function(ctx, ev)
    local ok, err
    if arg == nil then ok, err = pcall(fn, ctx, ev) else ok, err = pcall(fn, ctx, arg, ev) end
    if not ok then lost(1, string.format("a %s event could not be read: %s", name, tostring(err))) end
  end
end

local function event_handler(fn, kind) return guard(kind, fn, kind) end

dovecot_lua_notify_event_message_new = event_handler(added, "message.new")
dovecot_lua_notify_event_message_append = event_handler(added, "message.append")
dovecot_lua_notify_event_message_expunge = guard("message.expunge", function(ctx, ev)
  add(ctx, message(ctx, "message.expunge", ev))
end)
dovecot_lua_notify_event_flags_set = event_handler(flags_changed, "flags.set")
dovecot_lua_notify_event_flags_clear = event_handler(flags_changed, "flags.clear")
dovecot_lua_notify_event_message_read = guard("MessageRead", folded, "\\Seen")
dovecot_lua_notify_event_message_trash = guard("MessageTrash", folded, "\\Deleted")
dovecot_lua_notify_event_mailbox_create = event_handler(mailbox_event, "mailbox.create")
dovecot_lua_notify_event_mailbox_delete = event_handler(mailbox_event, "mailbox.delete")
dovecot_lua_notify_event_mailbox_rename = event_handler(mailbox_event, "mailbox.rename")
dovecot_lua_notify_event_mailbox_subscribe = event_handler(mailbox_event, "mailbox.subscribe")
dovecot_lua_notify_event_mailbox_unsubscribe = event_handler(mailbox_event, "mailbox.unsubscribe")

-- MessageRead / MessageTrash say what a FlagsSet already says; keep one only when no FlagsSet did.
local function fold(ctx)
  for _, f in ipairs(ctx.folded) do
    local mailbox, uid = text(f.ev.mailbox, 1024), int(f.ev.uid)
    if not ctx.seen[string.format("%s\0%d\0%s", mailbox, uid, f.flag)] then
      local e = message(ctx, "flags.set", f.ev)
      e.key = nil
      e.flags = array({ f.flag })
      e.keywords = array()
      add(ctx, e)
    end
  end
end

-- ---------------------------------------------------------------- Redis (RESP2, pipelined)

local function resp(args)
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    out[#out + 1] = "$" .. #a .. "\r\n"
    out[#out + 1] = a
    out[#out + 1] = "\r\n"
  end
  return table.concat(out)
end

-- Reads one reply; returns true for a success reply, or nil and the error.
local function read_reply(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local prefix = line:sub(1, 1)
  if prefix == "-" then return nil, line:sub(2) end
  if prefix == "$" then
    local n = tonumber(line:sub(2))
    if n and n >= 0 then
      local _, berr = sock:receive(n + 2)
      if berr then return nil, berr end
    end
  end
  return true
end

-- ---------------------------------------------------------------- names, resolved within the bound

-- LuaSocket's connect(name) resolves with the C library's getaddrinfo, which blocks for as long as
-- the resolver takes (seconds per server in a DNS outage; without end when an NSS module such as
-- mDNS waits on a daemon) and knows nothing of our deadline: every delivery would stall. So names
-- are resolved here, from /etc/hosts and then by asking the DNS servers (mail_bridge_dns_servers,
-- else those of /etc/resolv.conf, all at once, over UDP: RFC 1035) within the transaction's time
-- bound, and remembered while this script lives (see the top) for the answer's TTL (1 s to 5 min). When the name cannot be
-- resolved again, the address it had stays in use, and it is asked again 5 s later at the soonest;
-- a name never resolved is not asked again for 5 s either (its events are spooled meanwhile).
-- Addresses (IPv4, IPv6) are used as they are. Other name services of nsswitch.conf (mDNS, LDAP) are
-- not asked: give such hosts as addresses.

local NAME_MIN_TTL, NAME_MAX_TTL, NAME_RETRY = 1, 300, 5
local names = {} -- lower-cased name -> { addr, expires, retry, err }

local function address_literal(host)
  if host:find(":", 1, true) then return true end -- IPv6
  local a, b, c, d = host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, octet in ipairs({ a, b, c, d }) do
    if tonumber(octet) > 255 then return false end
  end
  return true
end

local function hosts_file(name)
  local f = io.open("/etc/hosts", "r")
  if not f then return nil end
  local v4, v6
  for line in f:lines() do
    local addr, aliases = line:gsub("#.*", ""):match("^%s*(%S+)%s+(.-)%s*$")
    if addr then
      for alias in aliases:gmatch("%S+") do
        if alias:lower() == name then
          if addr:find(":", 1, true) then v6 = v6 or addr else v4 = v4 or addr end
        end
      end
    end
    if v4 then break end
  end
  f:close()
  return v4 or v6
end

-- "host", "host:port", "[v6]:port" or a bare IPv6 address -> host, port
local function host_port(entry, default_port)
  local host, port = entry:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then
    if select(2, entry:gsub(":", "")) == 1 then host, port = entry:match("^([^:]+):(%d+)$") end
    host = host or entry
  end
  return host, tonumber(port) or default_port
end

-- The DNS servers to ask and the search domains, as the C library would read them (resolv.conf(5)).
local function dns_config(cfg)
  local servers, search = {}, {}
  if cfg.dns_servers then
    for entry in cfg.dns_servers:gmatch("[^%s,]+") do
      local host, port = host_port(entry, 53)
      servers[#servers + 1] = { host = host, port = port }
    end
  end
  local f = io.open("/etc/resolv.conf", "r")
  if f then
    for line in f:lines() do
      local word, rest = line:match("^%s*(%a+)%s+(.-)%s*$")
      local first = rest and rest:match("^(%S+)")
      if word == "nameserver" and first and not cfg.dns_servers and #servers < 3 then
        servers[#servers + 1] = { host = first:gsub("%%.*", ""), port = 53 } -- no IPv6 zone
      elseif word == "search" or word == "domain" then
        search = {}
        for domain in rest:gmatch("[^%s#;]+") do search[#search + 1] = domain:gsub("%.$", "") end
      end
    end
    f:close()
  end
  return servers, search
end

local function dns_query(id, name, qtype)
  local out = { string.pack(">I2I2I2I2I2I2", id, 0x0100, 1, 0, 0, 0) } -- recursion desired, 1 question
  for label in name:gmatch("[^.]+") do
    if #label > 63 then return nil end
    out[#out + 1] = string.pack("s1", label)
  end
  out[#out + 1] = string.pack(">BI2I2", 0, qtype, 1) -- root, QTYPE, class IN
  local query = table.concat(out)
  if #query > 512 then return nil end
  return query
end

local function skip_name(msg, pos)
  while true do
    local len = msg:byte(pos)
    if not len then return nil end
    if len >= 0xC0 then return pos + 2 end -- a compression pointer ends the name
    if len == 0 then return pos + 1 end
    pos = pos + 1 + len
  end
end

-- What one reply says: an address and its TTL; false and why (the name has no such address);
-- or nil (not the reply to this query, or a server that could not answer: wait for the others).
local function dns_reply(msg, id, qtype)
  if #msg < 12 then return nil end
  local rid, flags, questions, answers = string.unpack(">I2I2I2I2", msg)
  if rid ~= id or flags & 0x8000 == 0 then return nil end
  local rcode = flags & 0x000F
  if rcode == 3 then return false, "no such name" end
  if rcode ~= 0 then return nil end -- SERVFAIL, REFUSED, ...
  local pos = 13
  for _ = 1, questions do
    pos = skip_name(msg, pos)
    if not pos then return nil end
    pos = pos + 4
  end
  for _ = 1, answers do
    pos = skip_name(msg, pos)
    if not pos or pos + 10 > #msg + 1 then return nil end
    local rtype, _, ttl, len = string.unpack(">I2I2I4I2", msg, pos)
    pos = pos + 10
    if rtype == qtype and pos + len <= #msg + 1 then -- CNAMEs before it are the resolver's business
      if qtype == 1 and len == 4 then return string.format("%d.%d.%d.%d", msg:byte(pos, pos + 3)), ttl end
      if qtype == 28 and len == 16 then
        return string.format(string.rep("%02x%02x", 8, ":"), msg:byte(pos, pos + 15)), ttl
      end
    end
    pos = pos + len
  end
  return false, "no address"
end

-- Asks every server at once; the first that knows answers. Returns as dns_reply, with nil meaning
-- that no server answered in time.
local function dns_ask(servers, name, qtype, deadline)
  local id = math.random(0, 0xffff)
  local query = dns_query(id, name, qtype)
  if not query then return false, "not a DNS name" end
  local waiting = {}
  for _, server in ipairs(servers) do
    local udp = socket.udp()
    if udp then
      -- Only addresses: a name here would be resolved by the blocking C library.
      if address_literal(server.host) and udp:setpeername(server.host, server.port) and udp:send(query) then
        udp:settimeout(0)
        waiting[#waiting + 1] = udp
      else
        udp:close()
      end
    end
  end
  local found, detail = nil, "no DNS server answered"
  while found == nil and #waiting > 0 do
    local wait = deadline - socket.gettime()
    if wait <= 0 then detail = "DNS timeout"; break end
    local readable = socket.select(waiting, nil, wait)
    if #readable == 0 then detail = "DNS timeout"; break end
    for _, udp in ipairs(readable) do
      local msg = udp:receive()
      local answer, info
      if msg then answer, info = dns_reply(msg, id, qtype) end
      if answer ~= nil then
        found, detail = answer, info
        break
      end
      if not msg or (msg and #msg >= 2 and string.unpack(">I2", msg) == id) then
        for k, w in ipairs(waiting) do -- refused, or could not answer: stop waiting for this one
          if w == udp then table.remove(waiting, k); udp:close(); break end
        end
      end
    end
  end
  for _, udp in ipairs(waiting) do udp:close() end
  return found, detail
end

local function dns_lookup(cfg, name, deadline)
  local servers, search = dns_config(cfg)
  if #servers == 0 then return nil, "no DNS server configured" end
  local candidates = {}
  if not name:find(".", 1, true) then -- a single label: the search domains first (resolv.conf ndots:1)
    for _, domain in ipairs(search) do candidates[#candidates + 1] = name .. "." .. domain end
  end
  candidates[#candidates + 1] = name
  local err = "no such name"
  for _, candidate in ipairs(candidates) do
    for _, qtype in ipairs({ 1, 28 }) do -- A, then AAAA
      local addr, detail = dns_ask(servers, candidate, qtype, deadline)
      if addr then return addr, detail end
      err = detail
      if addr == nil then return nil, err end -- out of time, or no server answers
      if detail == "no such name" then break end
    end
  end
  return nil, err
end

-- The address to connect to for `host`, within the deadline; nil and why if there is none.
local function resolve(cfg, host, deadline)
  if address_literal(host) then return host end
  local name = host:lower():gsub("%.$", "")
  local now = socket.gettime()
  local known = names[name]
  if known and (now < known.expires or now < known.retry) then
    if known.addr then return known.addr end
    return nil, known.err
  end
  local until_ = deadline
  -- With an address in hand, a refresh may use only part of the time: the publish needs the rest.
  if known and known.addr then until_ = now + (deadline - now) * 0.4 end
  local addr, ttl = hosts_file(name), NAME_MAX_TTL
  if not addr and name == "localhost" then addr = "127.0.0.1" end
  if not addr then addr, ttl = dns_lookup(cfg, name, until_) end
  if addr then
    ttl = math.max(NAME_MIN_TTL, math.min(NAME_MAX_TTL, tonumber(ttl) or NAME_MIN_TTL))
    names[name] = { addr = addr, expires = now + ttl, retry = 0 }
    return addr
  end
  local why = tostring(ttl)
  if known and known.addr then
    known.retry = now + NAME_RETRY
    log_warning(string.format("cannot resolve %s again (%s): keeping %s", name, why, known.addr))
    return known.addr
  end
  names[name] = { expires = 0, retry = now + NAME_RETRY, err = why }
  return nil, why
end

-- A connected socket whose every later call is bounded by `deadline`; `remaining` re-arms it.
local function connect(cfg, host, port, deadline)
  local resolved, addr, rerr = pcall(resolve, cfg, host, deadline)
  if not resolved then addr, rerr = nil, addr end -- a bug here must cost the publish, not the events
  if not addr then return nil, string.format("cannot resolve %s: %s", host, tostring(rerr)) end
  local sock = socket.tcp()
  local function remaining()
    local r = deadline - socket.gettime()
    if r <= 0 then return nil end
    sock:settimeout(r)
    return r
  end
  if not remaining() then sock:close(); return nil, "timeout" end
  local ok, err = sock:connect(addr, port)
  if not ok then sock:close(); return nil, "connect: " .. tostring(err) end
  return sock, remaining
end

-- Sends every payload to host:port; returns how many were confirmed in order (all or fewer) and an
-- error.
local function publish_to(cfg, host, port, payloads, deadline)
  local sock, remaining = connect(cfg, host, port, deadline)
  if not sock then return 0, remaining end
  local ok, err
  local commands, expected = {}, 0
  if cfg.password then
    commands[#commands + 1] = resp({ "AUTH", cfg.password })
    expected = expected + 1
  end
  if cfg.db and cfg.db ~= 0 then
    commands[#commands + 1] = resp({ "SELECT", tostring(cfg.db) })
    expected = expected + 1
  end
  local preamble = expected
  for _, p in ipairs(payloads) do
    commands[#commands + 1] = resp({ "XADD", cfg.stream, "MAXLEN", "~", cfg.maxlen, "*", "e", p })
  end
  expected = expected + #payloads
  if not remaining() then sock:close(); return 0, "timeout" end
  ok, err = sock:send(table.concat(commands))
  if not ok then sock:close(); return 0, "send: " .. tostring(err) end
  local confirmed = 0
  for i = 1, expected do
    if not remaining() then err = "timeout"; break end
    local good, rerr = read_reply(sock)
    if not good then err = rerr; break end
    if i > preamble then confirmed = confirmed + 1 end
  end
  sock:close()
  if confirmed == #payloads then return confirmed, nil end
  return confirmed, err or "short reply"
end

-- The payloads after the first `n` (those a node confirmed before it failed).
local function after(payloads, n)
  local rest = {}
  for i = n + 1, #payloads do rest[#rest + 1] = payloads[i] end
  return rest
end

-- ---------------------------------------------------------------- Redis Cluster

-- The node that took this stream last, per configured address, while this script lives: on Redis
-- Cluster the configured node may not hold the stream's slot, and says so with
-- "MOVED <slot> <host>:<port>" (Redis Cluster specification, "Redirection and resharding").
local redirects = {}

local function publish_direct(cfg, payloads, deadline)
  local key = cfg.host .. ":" .. cfg.port .. "\0" .. cfg.stream
  local target = redirects[key] or { host = cfg.host, port = cfg.port }
  local confirmed, err = publish_to(cfg, target.host, target.port, payloads, deadline)
  local host, port = tostring(err or ""):match("^MOVED %d+ ([^%s]*):(%d+)$")
  if confirmed < #payloads and port then
    target = { host = (host ~= "" and host ~= "?") and host or cfg.host, port = tonumber(port) }
    redirects[key] = target
    local more
    more, err = publish_to(cfg, target.host, target.port, after(payloads, confirmed), deadline)
    confirmed = confirmed + more
  elseif confirmed < #payloads then
    redirects[key] = nil -- start again from the configured node: the slot may have moved back
  end
  return confirmed, err, target.host .. ":" .. target.port
end

-- ---------------------------------------------------------------- Redis Sentinel

-- The master each sentinel set named last, while this script lives (see the top): an IMAP session
-- makes many transactions, and asking on each would double the round trips.
local masters = {}

-- One RESP reply that is an array of bulk strings (or null), as SENTINEL GET-MASTER-ADDR-BY-NAME
-- answers; returns the strings, or nil and why.
local function read_strings(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  if line:sub(1, 1) == "-" then return nil, line:sub(2) end
  local n = line:sub(1, 1) == "*" and tonumber(line:sub(2)) or nil
  if not n then return nil, "unexpected reply " .. line:sub(1, 20) end
  if n < 0 then return nil, "no such master" end
  local out = {}
  for i = 1, n do
    local head, herr = sock:receive("*l")
    if not head then return nil, herr end
    local size = head:sub(1, 1) == "$" and tonumber(head:sub(2)) or nil
    if not size or size < 0 then return nil, "unexpected reply " .. head:sub(1, 20) end
    local body, berr = sock:receive(size + 2)
    if not body then return nil, berr end
    out[i] = body:sub(1, size)
  end
  return out
end

-- Asks each sentinel in turn for the master's address (Redis Sentinel documentation, "Sentinel
-- clients implementation"); returns {host, port} or nil and the last error.
local function ask_sentinels(cfg, deadline)
  local err = "no sentinel in mail_bridge_redis_sentinels"
  for entry in cfg.sentinels:gmatch("[^%s,]+") do
    local host, port = entry:match("^%[?([^%]]+)%]?:(%d+)$")
    host, port = host or entry, tonumber(port) or 26379
    local sock, remaining = connect(cfg, host, port, deadline)
    if not sock then
      err = string.format("sentinel %s: %s", entry, tostring(remaining))
    else
      local commands = {}
      if cfg.sentinel_password then commands[#commands + 1] = resp({ "AUTH", cfg.sentinel_password }) end
      commands[#commands + 1] = resp({ "SENTINEL", "get-master-addr-by-name", cfg.master })
      local answer, aerr
      if sock:send(table.concat(commands)) then
        if cfg.sentinel_password then
          local good, autherr = read_reply(sock)
          if not good then aerr = "AUTH: " .. tostring(autherr) end
        end
        if not aerr and remaining() then answer, aerr = read_strings(sock) end
      end
      sock:close()
      if answer and answer[1] and tonumber(answer[2]) then
        return { host = answer[1], port = tonumber(answer[2]) }
      end
      err = string.format("sentinel %s: %s", entry, tostring(aerr or "timeout"))
    end
  end
  return nil, err
end

-- Sends every payload to Redis (through the sentinels' master when configured); returns how many
-- were confirmed in order, an error, and the address tried last.
local function publish(cfg, payloads)
  if not has_socket then return 0, "lua-socket is not installed", "-" end
  local deadline = socket.gettime() + cfg.timeout
  if not cfg.sentinels then return publish_direct(cfg, payloads, deadline) end
  local key = cfg.sentinels .. "\0" .. cfg.master
  local known = masters[key]
  local master, err = known, nil
  if not master then
    master, err = ask_sentinels(cfg, deadline)
    if not master then return 0, err, "sentinels " .. cfg.sentinels end
    masters[key] = master
  end
  local confirmed
  confirmed, err = publish_to(cfg, master.host, master.port, payloads, deadline)
  if confirmed < #payloads and known then
    -- A refused connection or a READONLY reply is what a failover looks like from here: the
    -- remembered master may have moved. Ask again, and send the rest to the new one.
    masters[key] = nil
    local moved = ask_sentinels(cfg, deadline)
    if moved then
      masters[key] = moved
      if moved.host ~= master.host or moved.port ~= master.port then
        master = moved
        local more
        more, err = publish_to(cfg, master.host, master.port, after(payloads, confirmed), deadline)
        confirmed = confirmed + more
      end
    end
  end
  return confirmed, err, master.host .. ":" .. master.port
end

-- ---------------------------------------------------------------- spool

-- The marker (PENDING) is raised by renaming a new file onto it, never by touching the old one: the
-- bridge's drainer lowers it by renaming away the very file it looked at and puts it back if that is
-- no longer the one it saw (bridge/spool.py), so a raise can never be lost in a lowering.
local function raise_marker(dir)
  local tmp = string.format("%s/.pending-%016d-%08x", dir, now_us(), math.random(0, 0x7fffffff))
  local f = io.open(tmp, "w")
  if not f then return false end
  f:close()
  if os.rename(tmp, dir .. "/PENDING") then return true end
  os.remove(tmp)
  return false
end

-- Writes the events from `from` on to one spool file; true, or false and why.
-- Order of steps: the file exists (as .tmp) before the marker is raised, and the drainer keeps the
-- marker up while a .tmp younger than a minute exists, so the marker cannot be lowered between our
-- raising it and our file becoming visible, nor before the file is drained.
local function spool(cfg, events, from)
  local dir = cfg.spool
  local name = string.format("%s/%016d-%08x", dir, now_us(), math.random(0, 0x7fffffff))
  local f, err = io.open(name .. ".tmp", "wb")
  if not f then return false, string.format("cannot write spool %s: %s", dir, tostring(err)) end
  raise_marker(dir)
  local chunks = {}
  for i = from, #events do
    chunks[#chunks + 1] = msgpack(array({ cfg.stream, events[i] }))
  end
  local ok, werr = f:write(table.concat(chunks))
  local closed, cerr = f:close()
  if not ok or not closed then
    os.remove(name .. ".tmp")
    return false, "spool write failed: " .. tostring(werr or cerr)
  end
  local renamed, rerr = os.rename(name .. ".tmp", name .. ".mp")
  if not renamed then
    os.remove(name .. ".tmp")
    return false, "spool rename failed: " .. tostring(rerr)
  end
  return true
end

local function spool_pending(cfg)
  local f = io.open(cfg.spool .. "/PENDING", "r")
  if f then f:close(); return true end
  return false
end

local function deliver(ctx)
  fold(ctx)
  local events = ctx.events
  if #events == 0 then return end
  local cfg = ctx.cfg
  if spool_pending(cfg) then
    local spooled, why = spool(cfg, events, 1)
    if spooled then return end
    -- Events wait in the spool but these cannot join them: better out of order (the index does not
    -- depend on order, docs/events.md) than lost. Redis may well take them.
    log_warning(string.format("%s; publishing to Redis, ahead of the spooled events", why))
  end
  local payloads = {}
  for i, e in ipairs(events) do payloads[i] = msgpack(e) end
  local confirmed, err, where = publish(cfg, payloads)
  if confirmed < #events then
    log_warning(string.format("redis %s: %s; spooling %d event(s)", where, tostring(err), #events - confirmed))
    local spooled, why = spool(cfg, events, confirmed + 1)
    if not spooled then lost(#events - confirmed, "redis unavailable and " .. why) end
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
  if success == false then return end -- the transaction was rolled back: nothing happened
  local ok, err = pcall(deliver, ctx)
  if not ok then lost(ctx.events and #ctx.events or 1, "hook failed: " .. tostring(err)) end
end
