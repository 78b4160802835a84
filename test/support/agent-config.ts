/**
 * An agent's config for tests and benches: its CA and token files and
 * `agent.json` in `dir` (mode 0600), aimed at a control plane on loopback
 * and at a test namespace; `extra` fields override or add to it.
 */
import fs from 'node:fs';
import path from 'node:path';

export function writeAgentConfig(dir: string, o: { agentId: string; port: number; ca: string; token: string; netns: string; bpffs: string; extra?: Record<string, unknown> }): string {
  const file = (name: string, content: string) => {
    fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
    return path.join(dir, name);
  };
  return file(
    'agent.json',
    JSON.stringify({
      agent_id: o.agentId,
      state_dir: path.join(dir, 'state'),
      control_plane: { url: `wss://127.0.0.1:${o.port}/`, ca_file: file('ca.pem', o.ca), token_file: file('token', `${o.token}\n`) },
      netns: o.netns,
      bpffs: o.bpffs,
      admin_socket: path.join(dir, 'admin.sock'),
      registration_socket: path.join(dir, 'register.sock'),
      ...o.extra,
    }),
  );
}
