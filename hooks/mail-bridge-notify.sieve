# mail-bridge: publish each delivery (see dovecot-conf/93-mail-bridge-sieve.conf).
# Arguments: Redis host, port, stream, spool directory, time bound in milliseconds.
require ["vnd.dovecot.execute"];
execute :pipe "mail-bridge-sieve-notify.py" ["127.0.0.1", "6379", "mail:dovecot", "/var/spool/mail-bridge", "100"];
