"""Fleet adapters: the FleetStore implementations (Redis, in-memory), the HTTP calls a
coordinator makes to servers, and the client a server uses to report to a coordinator."""
