#!/bin/bash
# The two zkServer.sh commands a container uses: start-foreground, and status
# (exit 0 while this server serves: leader, follower or standalone).
set -euo pipefail
case "${1:-}" in
  start-foreground)
    cp="$(ls /usr/share/java/zookeeper.jar /usr/share/java/slf4j-api.jar \
      /usr/share/java/slf4j-log4j12.jar /usr/share/java/log4j-1.2.jar | paste -sd:)"
    exec java -Xms64m -Xmx512m -Dzookeeper.log.dir=/datalog \
      -Dlog4j.configuration=file:/etc/zookeeper/conf/log4j.properties -cp "$cp" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain /conf/zoo.cfg
    ;;
  status)
    exec 3<>/dev/tcp/127.0.0.1/2181
    echo srvr >&3
    grep -qE '^Mode: (leader|follower|standalone)' <&3
    ;;
  *)
    echo "usage: zkServer.sh start-foreground|status" >&2
    exit 2
    ;;
esac
