#!/bin/bash
# zoo.cfg and myid from the environment, as the upstream image writes them.
set -euo pipefail
mkdir -p /conf /data /datalog
if [ ! -f /conf/zoo.cfg ]; then
  {
    echo "dataDir=/data"
    echo "dataLogDir=/datalog"
    echo "tickTime=${ZOO_TICK_TIME:-2000}"
    echo "initLimit=${ZOO_INIT_LIMIT:-10}"
    echo "syncLimit=${ZOO_SYNC_LIMIT:-5}"
    echo "maxClientCnxns=${ZOO_MAX_CLIENT_CNXNS:-200}"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=${ZOO_4LW_COMMANDS_WHITELIST:-srvr}"
    echo "autopurge.snapRetainCount=3"
    echo "autopurge.purgeInterval=1"
    echo "clientPort=2181"
    for server in ${ZOO_SERVERS:-server.1=localhost:2888:3888;2181}; do
      echo "$server"
    done
  } >/conf/zoo.cfg
fi
echo "${ZOO_MY_ID:-1}" >/data/myid
exec "$@"
