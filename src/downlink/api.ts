// The command API (README "Commands (downlink)"), one ApiHandler for the status server's /api/:
//
//   POST   /api/devices/{pk}/{dn}/commands        submit: 202 with the queued command
//   GET    /api/devices/{pk}/{dn}/commands        the device's commands, newest first (?state= &limit= &before=)
//   GET    /api/devices/{pk}/{dn}/commands/{id}   one command
//   DELETE /api/devices/{pk}/{dn}/commands/{id}   cancel it: 200 with the cancelled command
//   GET    /api/commands                          every device's (?productKey= &deviceName= &state= &limit= &before=)
//   GET    /api/commands/{id}                     one command, whichever device it is for
//
// Errors are thrown as WanwuError; the status server answers them with httpStatus(code). Who may
// call is decided before this handler runs (apiAccessRefusal, config http.apiToken).

import { WanwuError } from '../errors.js';
import type { ApiHandler, ApiRequest, ApiResponse } from '../status/api.js';
import type { Downlink } from './index.js';
import type { ListFilter } from './store.js';
import { COMMAND_STATES, type Command, type CommandState } from './types.js';

/** Page size of a list without `limit`, and the most one page may hold. */
export const LIST_DEFAULT_LIMIT = 50;
export const LIST_MAX_LIMIT = 500;

/** A command as the API shows it: the stored fields, the payload as hex and, for Alink JSON, parsed. */
export function commandJson(c: Command): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: c.id,
    msgId: c.msgId,
    productKey: c.productKey,
    deviceName: c.deviceName,
    method: c.method,
    state: c.state,
    source: c.source,
  };
  if (c.requestId !== undefined) out.requestId = c.requestId;
  if (c.params !== undefined) out.params = c.params;
  out.topic = c.topic;
  out.payload = c.payload.toString('hex');
  // Everything but down_raw is the Alink JSON the device gets; down_raw bytes are the device's own.
  if (!c.topic.endsWith('/thing/model/down_raw')) {
    try {
      out.message = JSON.parse(c.payload.toString('utf8')) as unknown;
    } catch {
      /* not JSON: the hex says it all */
    }
  }
  out.createdAt = c.createdAt;
  out.updatedAt = c.updatedAt;
  out.expiresAt = c.expiresAt;
  out.attempts = c.attempts;
  if (c.via !== undefined) out.via = c.via;
  if (c.sentAt !== undefined) out.sentAt = c.sentAt;
  if (c.deliveredAt !== undefined) out.deliveredAt = c.deliveredAt;
  if (c.repliedAt !== undefined) out.repliedAt = c.repliedAt;
  if (c.reply !== undefined) out.reply = c.reply;
  return out;
}

function malformed(message: string): never {
  throw new WanwuError('WANWU_ERR_MALFORMED', message);
}

/** limit, before and state from the query string; anything else in it is ignored. */
function pageOf(query: URLSearchParams): Omit<ListFilter, 'productKey' | 'deviceName'> {
  const page: Omit<ListFilter, 'productKey' | 'deviceName'> = { limit: LIST_DEFAULT_LIMIT };
  const limit = query.get('limit');
  if (limit !== null) {
    if (!/^\d{1,4}$/.test(limit) || Number(limit) < 1 || Number(limit) > LIST_MAX_LIMIT) malformed(`limit is a whole number from 1 to ${LIST_MAX_LIMIT}`);
    page.limit = Number(limit);
  }
  const before = query.get('before');
  if (before !== null) {
    if (!/^\d{1,15}$/.test(before)) malformed('before is the "next" of the previous page (a command\'s msgId)');
    page.before = Number(before);
  }
  const state = query.get('state');
  if (state !== null) {
    if (!(COMMAND_STATES as readonly string[]).includes(state)) malformed(`state is one of ${COMMAND_STATES.join(', ')}`);
    page.state = state as CommandState;
  }
  return page;
}

/** A page of commands; `next` is the `before` of the following page, null on the last one. */
function listResponse(commands: Command[], limit: number): ApiResponse {
  const last = commands[commands.length - 1];
  return { status: 200, body: { commands: commands.map(commandJson), next: commands.length === limit && last ? last.msgId : null } };
}

export function createCommandApi(downlink: Pick<Downlink, 'submit' | 'get' | 'list' | 'cancel'>): ApiHandler {
  const unknown = (id: string) => new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', `no command ${id}`);
  /** The command, if it is this device's: another device's id is answered like an unknown one. */
  const ofDevice = (productKey: string, deviceName: string, id: string): Command => {
    const c = downlink.get(id);
    if (!c || c.productKey !== productKey || c.deviceName !== deviceName) throw new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', `${productKey}/${deviceName} has no command ${id}`);
    return c;
  };

  return (req: ApiRequest): ApiResponse | null => {
    const s = req.segments;
    const read = req.method === 'GET' || req.method === 'HEAD';
    if (s[0] === 'devices' && s.length >= 4 && s.length <= 5 && s[3] === 'commands') {
      const productKey = s[1]!;
      const deviceName = s[2]!;
      const id = s[4];
      if (id === undefined) {
        if (req.method === 'POST') return { status: 202, body: commandJson(downlink.submit(productKey, deviceName, req.body, 'api')) };
        if (read) {
          const page = pageOf(req.query);
          return listResponse(downlink.list({ ...page, productKey, deviceName }), page.limit);
        }
        return null;
      }
      if (read) return { status: 200, body: commandJson(ofDevice(productKey, deviceName, id)) };
      if (req.method === 'DELETE') {
        ofDevice(productKey, deviceName, id);
        return { status: 200, body: commandJson(downlink.cancel(id)) };
      }
      return null;
    }
    if (s[0] === 'commands' && s.length <= 2 && read) {
      if (s.length === 2) {
        const c = downlink.get(s[1]!);
        if (!c) throw unknown(s[1]!);
        return { status: 200, body: commandJson(c) };
      }
      const page = pageOf(req.query);
      const filter: ListFilter = { ...page };
      const productKey = req.query.get('productKey');
      const deviceName = req.query.get('deviceName');
      if (productKey !== null) filter.productKey = productKey;
      if (deviceName !== null) filter.deviceName = deviceName;
      return listResponse(downlink.list(filter), page.limit);
    }
    return null;
  };
}
