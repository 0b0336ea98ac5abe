# syntax=docker/dockerfile:1
# One image for every role: `worker`, `scheduler`, `http`, `migrate` (the command picks it):
#   docker run stowage worker --metrics-port 9464 | scheduler | http | migrate
# Build stage: dev dependencies, TypeScript build, then `npm prune --omit=dev`; the run stage
# copies only the pruned node_modules and dist/, so no dev dependency reaches it (nor s3rver, the
# optional embedded store of `stowage dev`).

FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --omit=optional

FROM node:24-bookworm-slim AS run
# HTTP_HOST=0.0.0.0: the http role is reached from outside the container, so it refuses to start
# without STOWAGE_AUTH_SECRET or STOWAGE_BASIC_AUTH (intended). Workers serve /metrics on the same host.
# AGG_LOCAL_FALLBACK: a directory the non-root user owns; mount a persistent volume there.
ENV NODE_ENV=production HTTP_HOST=0.0.0.0 HTTP_PORT=3000 \
    AGG_LOCAL_FALLBACK=/var/lib/stowage/fallback-uploads
# tini: signals reach node, zombies are reaped. pg_dump/pg_restore for PostgreSQL backups come
# from the PostgreSQL project's apt repository (PGDG), newest major: pg_dump refuses a server newer
# than itself, and Debian bookworm's client (15) is older than the compose file's server (16).
ARG PG_CLIENT_MAJOR=17
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini ca-certificates curl \
  && install -d /usr/share/postgresql-common/pgdg \
  && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc \
  && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" > /etc/apt/sources.list.d/pgdg.list \
  && apt-get update \
  && apt-get install -y --no-install-recommends postgresql-client-${PG_CLIENT_MAJOR} \
  && apt-get purge -y curl && apt-get autoremove -y \
  && rm -rf /var/lib/apt/lists/* \
  && mkdir -p /var/lib/stowage/fallback-uploads \
  && chown -R node:node /var/lib/stowage
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY migrations ./migrations
COPY deploy/docker/healthcheck.mjs ./deploy/docker/healthcheck.mjs
# The image's `node` user (uid 1000): never root at run time.
USER node
VOLUME ["/var/lib/stowage"]
EXPOSE 3000 9464
# Role-aware: http → GET /healthz; worker --metrics-port P → GET /metrics on P (workers have no
# /healthz); scheduler, migrate and a worker without a metrics port → healthy while running.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "deploy/docker/healthcheck.mjs"]
ENTRYPOINT ["tini", "--", "node", "bin/stowage.js"]
CMD ["worker"]
