// TurboWarp's cloud-server (https://github.com/TurboWarp/cloud-server, checked out and installed
// into bench/.turbowarp by bench/setup.sh) as a bench/run.py target. Its own code runs
// unmodified; this launcher only sets what its src/config.js would be edited for:
//   node bench/turbowarp_server.js DIR PORT [MAX_CLIENTS_PER_ROOM]
// - port: PORT (its config reads process.env.PORT, set here so argv alone decides)
// - logging: console only (no rotating log files inside the checkout), level "warn" like the
//   stratus target's log_level = "warning" (its default, "info", logs 2-3 lines per join)
// - a room's client limit: 1000 instead of its fixed 128, as for stratus (bigroom has 500
//   clients in one room); Room's constructor sets it, so it is set again before each join
// Everything else stays at its defaults: bufferSends = 60 (one global 60 Hz flush of every
// client's pending lines), perMessageDeflate off, ws with bufferutil/utf-8-validate.
'use strict';
const path = require('path');

const [dir, port, maxClients = '1000'] = process.argv.slice(2);
if (!dir || !port) {
  console.error('usage: node turbowarp_server.js DIR PORT [MAX_CLIENTS_PER_ROOM]');
  process.exit(2);
}
const src = path.resolve(dir, 'src');
process.chdir(path.resolve(dir)); // serve-static serves ./public
process.env.PORT = port;

const config = require(path.join(src, 'config.js'));
config.port = Number(port);
config.logging.rotation = false;
config.logging.console = true;

const Room = require(path.join(src, 'Room.js'));
const addClient = Room.prototype.addClient;
Room.prototype.addClient = function (client) {
  this.maxClients = Number(maxClients);
  return addClient.call(this, client);
};

require(path.join(src, 'logger.js')).level = 'warn';
require(path.join(src, 'index.js'));
