import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';
import fastifyPlugin from 'fastify-plugin';
import { packageVersion } from '../package-files.js';

/**
 * The OpenAPI document, generated from the route schemas (served by operation-routes.ts).
 * Registered before the routes, so that it sees every one of them.
 */
async function openApi(app: FastifyInstance, { authenticated }: { authenticated: boolean }) {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Tally', version: packageVersion, description: 'Write-behind counters.' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      ...(authenticated ? { security: [{ bearer: [] }] } : {}),
    },
    // Fastify needs a body schema to validate one, and the generator then calls the body
    // required; the single increment takes none (an empty POST counts 1).
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject;
      const single = document.openapiObject.paths?.['/v1/counters/{counter}/increment']?.post;
      if (single?.requestBody !== undefined && 'required' in single.requestBody) {
        single.requestBody.required = false;
      }
      return document.openapiObject;
    },
  });
}

/** fastify-plugin: swagger must sit on the root instance to see the routes of every plugin. */
export const registerOpenApi = fastifyPlugin(openApi, { name: 'tally-openapi' });
