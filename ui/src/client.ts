// Clients of the service over gRPC-Web, on the origin the viewer came
// from, with the session's credential and tenant on every call.
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuditService } from "./gen/audit/v1/audit_pb";
import { IntegrityService } from "./gen/audit/v1/integrity_pb";
import { PolicyService } from "./gen/audit/v1/policy_pb";
import type { Session } from "./session";

/** The three services, for one credential and tenant. */
export interface Clients {
  audit: Client<typeof AuditService>;
  integrity: Client<typeof IntegrityService>;
  policy: Client<typeof PolicyService>;
}

export function clientsFor(session: Session, tenant = session.tenant): Clients {
  const credentials: Interceptor = (next) => (request) => {
    if (session.kind === "api-key") request.header.set("x-api-key", session.credential);
    else request.header.set("authorization", `Bearer ${session.credential}`);
    request.header.set("x-tenant-id", tenant);
    return next(request);
  };
  const transport = createGrpcWebTransport({
    baseUrl: location.origin,
    interceptors: [credentials],
  });
  return {
    audit: createClient(AuditService, transport),
    integrity: createClient(IntegrityService, transport),
    policy: createClient(PolicyService, transport),
  };
}
