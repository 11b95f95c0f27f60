#!/usr/bin/env node
'use strict';
/*
 * Headless Scratch 3 client for the Stratus interop tests.
 *
 * Runs a project in npm `scratch-vm` (no renderer, no audio) with a cloud provider that behaves
 * like TurboWarp's scratch-gui `src/lib/cloud-provider.js`, and is driven by a parent process
 * over stdin/stdout with one JSON object per line.
 *
 *   node vm_host.js --url ws://127.0.0.1:9080 --project path/to/project.sb3 \
 *       --user player123 --project-id 42 [--turbo] [--fps 30|60] [--throttle-ms 50]
 *       [--no-reconnect] [--connect auto|always|never] [--user-agent UA] [--origin O]
 *       [--no-traffic-events] [--log-level error|warn|info|debug]
 *
 * Commands (stdin), each may carry an "id" that is echoed in the reply
 * ({"id":..,"ok":true,"result":..} or {"id":..,"ok":false,"error":".."}):
 *   {"cmd":"greenflag"}                      start green-flag scripts
 *   {"cmd":"stop"}                           the stop sign (stop all scripts)
 *   {"cmd":"get_var","name":N,"target":T?}   value of a scalar variable (stage unless target)
 *   {"cmd":"get_vars","target":T?}           {name: value} of all scalar variables of a target
 *   {"cmd":"set_var","name":N,"value":V,"target":T?}
 *                                            set like a "set [var] to" block would: a cloud
 *                                            variable's new value goes out through the provider
 *   {"cmd":"get_list","name":N,"target":T?}  list contents (array)
 *   {"cmd":"set_list","name":N,"value":[..],"target":T?}
 *   {"cmd":"broadcast","name":B}             start "when I receive B" scripts
 *   {"cmd":"status"}                         {connected, threads, cloud, turbo, ...}
 *   {"cmd":"set_turbo","on":bool}
 *   {"cmd":"disconnect"}                     close the cloud connection without reconnecting
 *   {"cmd":"connect"}                        (re)open the cloud connection with a new provider
 *   {"cmd":"close_socket","code":C?}         close the socket like a network drop would: the
 *                                            provider reconnects unless --no-reconnect
 *   {"cmd":"exit"}                           stop everything and exit
 *
 * Events (stdout):
 *   {"event":"ready","cloud":bool,"cloud_vars":[..],"targets":[..],"load_ms":n}
 *   {"event":"connecting","url":U,"attempt":n}
 *   {"event":"connected"}
 *   {"event":"closed","code":n,"reason":s,"reconnect_ms":n|null}
 *   {"event":"recv","line":s}                one received line (a message split on "\n")
 *   {"event":"send","data":s}                one message written to the socket (without "\n")
 *   {"event":"error","where":s,"message":s}  non-fatal problem (bad JSON from the server, ...)
 *   {"event":"fatal","message":s}            the host is exiting because of an error
 *
 * Nothing else is written to stdout: console/minilog output is redirected to stderr.
 */

// ---------------------------------------------------------------------------------------------
// stdout is the protocol channel: everything else that writes to it goes to stderr instead.
const protocolWrite = process.stdout.write.bind(process.stdout);
process.stdout.write = (chunk, encoding, callback) =>
    process.stderr.write(chunk, encoding, callback);

const emit = obj => {
    protocolWrite(`${JSON.stringify(obj)}\n`);
};

const fatal = (message, code = 1) => {
    try {
        process.stderr.write(`vm_host fatal: ${message}\n`);
        emit({event: 'fatal', message: String(message)});
    } finally {
        process.exit(code);
    }
};

process.on('uncaughtException', err => fatal(err && err.stack ? err.stack : err));
process.on('unhandledRejection', err => fatal(err && err.stack ? err.stack : err));

const fs = require('fs');
const path = require('path');
const readline = require('readline');

// ---------------------------------------------------------------------------------------------
// Arguments

const parseArgs = argv => {
    const opts = {
        url: null,
        project: null,
        user: 'player123',
        projectId: null,
        turbo: false,
        fps: 30,
        throttleMs: 50,
        reconnect: true,
        connect: 'auto',
        userAgent: `Mozilla/5.0 (stratus-interop; headless scratch-vm) Node/${process.versions.node}`,
        origin: null,
        trafficEvents: true,
        logLevel: process.env.STRATUS_VM_LOG || 'error'
    };
    const valueOf = (i, name) => {
        if (i + 1 >= argv.length) throw new Error(`missing value for ${name}`);
        return argv[i + 1];
    };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        switch (arg) {
        case '--url': opts.url = valueOf(i, arg); i++; break;
        case '--project': opts.project = valueOf(i, arg); i++; break;
        case '--user': opts.user = valueOf(i, arg); i++; break;
        case '--project-id': opts.projectId = valueOf(i, arg); i++; break;
        case '--turbo': opts.turbo = true; break;
        case '--fps': opts.fps = Number(valueOf(i, arg)); i++; break;
        case '--throttle-ms': opts.throttleMs = Number(valueOf(i, arg)); i++; break;
        case '--no-reconnect': opts.reconnect = false; break;
        case '--connect': opts.connect = valueOf(i, arg); i++; break;
        case '--user-agent': opts.userAgent = valueOf(i, arg); i++; break;
        case '--origin': opts.origin = valueOf(i, arg); i++; break;
        case '--no-traffic-events': opts.trafficEvents = false; break;
        case '--log-level': opts.logLevel = valueOf(i, arg); i++; break;
        default: throw new Error(`unknown argument ${arg}`);
        }
    }
    if (!opts.project) throw new Error('--project is required');
    if (opts.fps !== 30 && opts.fps !== 60) throw new Error('--fps must be 30 or 60');
    if (!['auto', 'always', 'never'].includes(opts.connect)) {
        throw new Error('--connect must be auto, always or never');
    }
    if (opts.connect !== 'never' && (!opts.url || opts.projectId === null)) {
        throw new Error('--url and --project-id are required unless --connect never');
    }
    return opts;
};

let opts;
try {
    opts = parseArgs(process.argv.slice(2));
} catch (e) {
    fatal(e.message, 2);
}

// ---------------------------------------------------------------------------------------------
// scratch-vm and its logging

const minilog = require('minilog');
const VirtualMachine = require('scratch-vm');
const {ScratchStorage} = require('scratch-storage');
const WebSocket = require('ws');

const LOG_LEVELS = ['debug', 'info', 'warn', 'error'];
minilog.suggest.clear();
if (opts.logLevel === 'none') {
    minilog.disable();
} else {
    const index = LOG_LEVELS.indexOf(opts.logLevel);
    if (index > 0) minilog.suggest.deny(/.*/, LOG_LEVELS[index - 1]);
}

// ---------------------------------------------------------------------------------------------
// Cloud provider (after TurboWarp scratch-gui src/lib/cloud-provider.js)

/**
 * Leading + trailing throttle like lodash.throttle(fn, wait): the first call runs at once,
 * calls within `wait` ms of the last run are collapsed into one trailing run with the newest
 * arguments (intermediate messages are dropped, as in the TurboWarp GUI).
 */
const throttle = (fn, wait) => {
    if (!(wait > 0)) return Object.assign(arg => fn(arg), {cancel () {}});
    let last = -Infinity;
    let timer = null;
    let pending;
    const fire = () => {
        timer = null;
        last = Date.now();
        fn(pending);
    };
    const throttled = arg => {
        pending = arg;
        const remaining = wait - (Date.now() - last);
        if (remaining <= 0 && timer === null) {
            fire();
        } else if (timer === null) {
            timer = setTimeout(fire, Math.max(remaining, 0));
        }
    };
    throttled.cancel = () => {
        if (timer !== null) clearTimeout(timer);
        timer = null;
    };
    return throttled;
};

class CloudProvider {
    constructor (vm, options) {
        this.vm = vm;
        this.options = options;
        this.username = options.user;
        this.projectId = options.projectId;
        this.cloudHost = options.url;
        this.connectionAttempts = 0;
        this.queuedData = [];
        this.connection = null;
        this._connectionTimeout = null;
        this.sendCloudData = throttle(data => this._sendCloudData(data), options.throttleMs);
        this.openConnection();
    }

    get connected () {
        return !!this.connection && this.connection.readyState === WebSocket.OPEN;
    }

    openConnection () {
        this.connectionAttempts += 1;
        const headers = {};
        if (this.options.userAgent) headers['User-Agent'] = this.options.userAgent;
        const wsOptions = {headers};
        if (this.options.origin) wsOptions.origin = this.options.origin;
        emit({event: 'connecting', url: this.cloudHost, attempt: this.connectionAttempts});
        try {
            this.connection = new WebSocket(this.cloudHost, wsOptions);
        } catch (e) {
            emit({event: 'error', where: 'connect', message: String(e && e.message)});
            this.connection = null;
            return;
        }
        this.connection.on('open', () => this.onOpen());
        this.connection.on('message', (data, isBinary) => this.onMessage(data, isBinary));
        this.connection.on('error', e => {
            // Always followed by 'close', which handles reconnecting.
            emit({event: 'error', where: 'socket', message: String(e && e.message)});
        });
        this.connection.on('close', (code, reason) => this.onClose(code, reason.toString()));
    }

    onMessage (data, isBinary) {
        if (isBinary) {
            emit({event: 'error', where: 'recv', message: 'binary message ignored'});
            return;
        }
        const messageString = data.toString('utf8');
        // Like the GUI: split on "\n", skip empty lines, JSON.parse each line. A line that is not
        // JSON throws in the GUI's handler and the rest of that message is lost; same here.
        const lines = messageString.split('\n');
        for (const line of lines) {
            if (!line) continue;
            if (this.options.trafficEvents) emit({event: 'recv', line});
            let message;
            try {
                message = JSON.parse(line);
            } catch (e) {
                emit({event: 'error', where: 'recv', message: `invalid JSON: ${e.message}`, line});
                return;
            }
            if (!this.vm) return;
            this.vm.postIOData('cloud', this.parseMessage(message));
        }
    }

    onOpen () {
        this.connectionAttempts = 1;
        this.writeToServer('handshake');
        emit({event: 'connected'});
        this.queuedData.forEach(data => this.sendCloudData(data));
        this.queuedData = [];
    }

    onClose (code, reason) {
        const noReconnect = code === 4002 || code === 4004 || !this.options.reconnect;
        let delay = null;
        if (!noReconnect) {
            const exponential = (Math.pow(2, Math.min(this.connectionAttempts, 5)) - 1) * 1000;
            delay = Math.random() * exponential;
            this._connectionTimeout = setTimeout(() => {
                this._connectionTimeout = null;
                this.openConnection();
            }, delay);
        }
        emit({event: 'closed', code, reason, reconnect_ms: delay});
    }

    /** Simulate a dropped connection: close the socket but keep the close handler. */
    dropConnection (code) {
        if (this.connection) {
            if (code) this.connection.close(code);
            else this.connection.terminate();
        }
    }

    parseMessage (message) {
        const varData = {};
        if (message && message.method === 'set') {
            varData.varUpdate = {name: message.name, value: message.value};
        }
        return varData;
    }

    writeToServer (methodName, dataName, dataValue, dataNewName) {
        const msg = {};
        msg.method = methodName;
        msg.user = this.username;
        msg.project_id = this.projectId;
        if (dataName) msg.name = dataName;
        if (dataNewName) msg.new_name = dataNewName;
        if (typeof dataValue !== 'undefined' && dataValue !== null) msg.value = dataValue;
        const dataToWrite = JSON.stringify(msg);
        if (this.connected) {
            this.sendCloudData(dataToWrite);
        } else if (msg.method === 'create' || msg.method === 'delete' || msg.method === 'rename') {
            this.queuedData.push(dataToWrite);
        }
    }

    _sendCloudData (data) {
        if (!this.connected) return;
        if (this.options.trafficEvents) emit({event: 'send', data});
        this.connection.send(`${data}\n`);
    }

    createVariable (name, value) {
        this.writeToServer('create', name, value);
    }

    updateVariable (name, value) {
        this.writeToServer('set', name, value);
    }

    renameVariable (oldName, newName) {
        this.writeToServer('rename', oldName, null, newName);
    }

    deleteVariable (name) {
        this.writeToServer('delete', name);
    }

    requestCloseConnection () {
        if (this.connection &&
            this.connection.readyState !== WebSocket.CLOSING &&
            this.connection.readyState !== WebSocket.CLOSED) {
            const connection = this.connection;
            connection.removeAllListeners('close');
            connection.removeAllListeners('message');
            connection.on('error', () => {});
            connection.on('close', code => emit({event: 'closed', code, reason: '', reconnect_ms: null}));
            connection.close();
        }
        this.clear();
    }

    clear () {
        this.sendCloudData.cancel();
        this.connection = null;
        this.vm = null;
        if (this._connectionTimeout) {
            clearTimeout(this._connectionTimeout);
            this._connectionTimeout = null;
        }
        this.connectionAttempts = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// The VM

const vm = new VirtualMachine();
const storage = new ScratchStorage();
vm.attachStorage(storage);
vm.setCompatibilityMode(opts.fps === 30);
vm.setTurboMode(opts.turbo);
let provider = null;

const connectCloud = () => {
    if (provider) provider.requestCloseConnection();
    provider = new CloudProvider(vm, opts);
    vm.setCloudProvider(provider);
};

const disconnectCloud = () => {
    if (provider) {
        provider.requestCloseConnection();
        provider = null;
        vm.setCloudProvider(null);
    }
};

const findTarget = name => {
    if (name === undefined || name === null || name === '' || name === '_stage_') {
        return vm.runtime.getTargetForStage();
    }
    const target = vm.runtime.getSpriteTargetByName(name);
    if (!target) throw new Error(`no sprite named ${JSON.stringify(name)}`);
    return target;
};

const findVariable = (targetName, name, type) => {
    const target = findTarget(targetName);
    const variable = target.lookupVariableByNameAndType(name, type, true);
    if (variable) return {target, variable};
    // A sprite can read stage (global) variables too.
    const stage = vm.runtime.getTargetForStage();
    const global = stage.lookupVariableByNameAndType(name, type, true);
    if (global) return {target: stage, variable: global};
    const kind = type === '' ? 'variable' : 'list';
    throw new Error(`no ${kind} named ${JSON.stringify(name)} in ${target.getName()}`);
};

const jsonSafe = value => {
    if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
    return value;
};

const commands = {
    greenflag () {
        vm.greenFlag();
        return null;
    },
    stop () {
        vm.stopAll();
        return null;
    },
    get_var ({name, target}) {
        return jsonSafe(findVariable(target, name, '').variable.value);
    },
    get_vars ({target}) {
        const result = {};
        for (const variable of Object.values(findTarget(target).variables)) {
            if (variable.type === '') result[variable.name] = jsonSafe(variable.value);
        }
        return result;
    },
    set_var ({name, value, target}) {
        const {variable} = findVariable(target, name, '');
        // Exactly what data_setvariableto does.
        variable.value = value;
        if (variable.isCloud) {
            vm.runtime.ioDevices.cloud.requestUpdateVariable(variable.name, value);
        }
        return null;
    },
    get_list ({name, target}) {
        return findVariable(target, name, 'list').variable.value.map(jsonSafe);
    },
    set_list ({name, value, target}) {
        const {variable} = findVariable(target, name, 'list');
        variable.value = Array.from(value);
        variable._monitorUpToDate = false;
        return null;
    },
    broadcast ({name}) {
        const threads = vm.runtime.startHats('event_whenbroadcastreceived', {BROADCAST_OPTION: name});
        return threads ? threads.length : 0;
    },
    status () {
        return {
            connected: !!provider && provider.connected,
            threads: vm.runtime.threads.length,
            cloud: vm.runtime.hasCloudData(),
            turbo: vm.runtime.turboMode,
            fps: opts.fps
        };
    },
    set_turbo ({on}) {
        vm.setTurboMode(!!on);
        return null;
    },
    disconnect () {
        disconnectCloud();
        return null;
    },
    connect () {
        connectCloud();
        return null;
    },
    close_socket ({code}) {
        if (!provider) throw new Error('not connected');
        provider.dropConnection(code);
        return null;
    },
    exit () {
        shutdown(0);
        return null;
    }
};

let shuttingDown = false;
const shutdown = code => {
    if (shuttingDown) return;
    shuttingDown = true;
    try {
        disconnectCloud();
        vm.stopAll();
        vm.quit();
    } catch (e) {
        process.stderr.write(`vm_host: error during shutdown: ${e && e.stack}\n`);
    }
    // Let the close frame and the last replies go out.
    setTimeout(() => process.exit(code), 50);
};

const handleLine = line => {
    if (!line.trim()) return;
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        emit({event: 'error', where: 'command', message: `invalid JSON: ${e.message}`});
        return;
    }
    const id = request.id;
    const handler = Object.prototype.hasOwnProperty.call(commands, request.cmd) ?
        commands[request.cmd] : null;
    if (!handler) {
        emit({id, ok: false, error: `unknown command ${JSON.stringify(request.cmd)}`});
        return;
    }
    try {
        const result = handler(request);
        emit({id, ok: true, result: result === undefined ? null : result});
    } catch (e) {
        emit({id, ok: false, error: String(e && e.message ? e.message : e)});
    }
};

const main = async () => {
    const buffer = fs.readFileSync(path.resolve(opts.project));
    const started = Date.now();
    await vm.loadProject(buffer);
    const loadMs = Date.now() - started;
    vm.start();

    const stage = vm.runtime.getTargetForStage();
    const cloudVars = Object.values(stage.variables)
        .filter(v => v.isCloud)
        .map(v => v.name);
    emit({
        event: 'ready',
        cloud: vm.runtime.hasCloudData(),
        cloud_vars: cloudVars,
        targets: vm.runtime.targets.filter(t => t.isOriginal).map(t => t.getName()),
        load_ms: loadMs
    });

    // Like cloud-manager-hoc: connect once the project is loaded, if it has cloud variables.
    if (opts.connect === 'always' || (opts.connect === 'auto' && vm.runtime.hasCloudData())) {
        connectCloud();
    }

    const rl = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
    rl.on('line', handleLine);
    rl.on('close', () => shutdown(0));
};

main().catch(e => fatal(e && e.stack ? e.stack : e));
