"""The AMQP 0-9-1 bridge (`sidecar.bridges.amqp.bridge`): its configuration
(`_config`, read with the sidecar's file, without aio-pika), the translation
between AMQP messages and bus messages (`_convert`) and the rules that move
them (`_links`)."""
