# mail-bridge: a mail re-sent by Postfix after a lost filter reply carries the same
# X-Mail-Bridge-Id as the copy already delivered: keep the first, discard the second.
# Tracked per user for seven days (longer than Postfix keeps a mail queued by default).
# The header the filter prepends is the first of its name, so a sender cannot choose it.
require ["duplicate"];

if duplicate :header "X-Mail-Bridge-Id" :seconds 604800 {
  discard;
  stop;
}
