"""The replicated log of cluster mode: NATS JetStream, one stream per partition.

Gateways publish validated batches to the partition streams; loaders read
each partition's stream from the position their progress records. A batch is
acknowledged once JetStream has stored it on a quorum of the stream's
replicas."""
