"""The batch fold on aiokafka: run loop, partition tasks, state stores, restore."""
