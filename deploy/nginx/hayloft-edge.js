// hayloft's CDN edge for nginx (njs 0.7+, Debian: libnginx-mod-http-js).
//
// Checks signed URLs (`?e=<expiry>&k=<key id>&s=<signature>[&ip=<network>]`)
// with the same key ring file the volume servers use, before nginx looks at
// its cache, exactly as the origin does (access/src/signed_url.rs):
//
//   s = base64url(HMAC-SHA256(secret of key k,
//         "hayloft-url-v1\n" + path + "\n" + e + "\n" + k + "\n" + ip))
//
// where path is the request path exactly as sent. The verdict is one of
//   "public"  no signing parameter: passed on; the origin answers for
//             `signed` collections (403) and serves public ones;
//   "signed"  a genuine, unexpired URL: served from the cache if there;
//   "403"     malformed, unknown key, bad signature, lifetime too long,
//             client outside the bound network;
//   "410"     genuine but expired.
// The cache key is the path and the verdict, never the signing parameters:
// every viewer with a valid URL shares one cached copy, and a request that
// was not verified never reaches a copy cached for verified ones.
//
// The key ring is read on every request (a few small files, in the page
// cache): removing a key from it revokes its URLs at this edge at once, as
// SIGHUP does at the origin. Secrets come from `secret_file` (relative to
// the key ring) or `secret_env` (list the variable with nginx's `env`
// directive, or workers do not see it). Variables read:
//   $hayloft_keyring        path of the key ring file (required)
//   $hayloft_max_lifetime   seconds a URL may live, default 86400
//   $hayloft_clock_skew     seconds of clock skew allowed, default 60

var crypto = require('crypto');
var fs = require('fs');

var VERSION = 'hayloft-url-v1';
var SIGNATURE_CHARS = 43;
var KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

function rawPath(r) {
    var uri = r.variables.request_uri || '';
    var q = uri.indexOf('?');
    return q < 0 ? uri : uri.substring(0, q);
}

// The signing parameters of the query: null when there are none, 'bad'
// when they are incomplete, repeated or malformed.
function params(query) {
    var found = {};
    var any = false;
    var pairs = (query || '').split('&');
    for (var i = 0; i < pairs.length; i++) {
        var pair = pairs[i];
        var eq = pair.indexOf('=');
        var name = eq < 0 ? pair : pair.substring(0, eq);
        var value = eq < 0 ? '' : pair.substring(eq + 1);
        if (name !== 'e' && name !== 'k' && name !== 's' && name !== 'ip') {
            continue;
        }
        if (found[name] !== undefined) {
            return 'bad';
        }
        found[name] = value;
        any = true;
    }
    if (!any) {
        return null;
    }
    if (found.e === undefined || found.k === undefined || found.s === undefined) {
        return 'bad';
    }
    if (!/^[0-9]{1,20}$/.test(found.e) || !KEY_ID.test(found.k)
        || found.s.length !== SIGNATURE_CHARS) {
        return 'bad';
    }
    return found;
}

function dirname(path) {
    var slash = path.lastIndexOf('/');
    return slash < 0 ? '.' : path.substring(0, slash);
}

function trimEnd(buffer) {
    var end = buffer.length;
    while (end > 0 && (buffer[end - 1] === 0x20 || (buffer[end - 1] >= 0x09 && buffer[end - 1] <= 0x0d))) {
        end--;
    }
    return buffer.slice(0, end);
}

// The value of a `name = "value"` line, or undefined.
function setting(line) {
    var m = /^([A-Za-z_]+)\s*=\s*"([^"]*)"\s*(#.*)?$/.exec(line);
    return m ? [m[1], m[2]] : undefined;
}

// The key ring: { id: secret bytes }. Only the shape hayloft documents
// (config/keyring.example.toml): `signing`, then `[[keys]]` tables with
// `id` and `secret_file` or `secret_env`.
function keyring(path) {
    var lines = fs.readFileSync(path, 'utf8').split('\n');
    var tables = [];
    var current = null;
    for (var i = 0; i < lines.length; i++) {
        var line = lines[i].trim();
        if (line === '' || line[0] === '#') {
            continue;
        }
        if (line.replace(/\s*#.*$/, '') === '[[keys]]') {
            current = {};
            tables.push(current);
            continue;
        }
        var kv = setting(line);
        if (kv && current) {
            current[kv[0]] = kv[1];
        }
    }
    var keys = {};
    for (var j = 0; j < tables.length; j++) {
        var t = tables[j];
        if (!t.id || !KEY_ID.test(t.id)) {
            continue;
        }
        var secret;
        if (t.secret_file !== undefined) {
            var file = t.secret_file[0] === '/' ? t.secret_file : dirname(path) + '/' + t.secret_file;
            secret = trimEnd(fs.readFileSync(file));
        } else if (t.secret_env !== undefined && process.env[t.secret_env] !== undefined) {
            secret = Buffer.from(process.env[t.secret_env].trim());
        }
        if (secret && secret.length >= 32) {
            keys[t.id] = secret;
        }
    }
    return keys;
}

function sameText(a, b) {
    if (a.length !== b.length) {
        return false;
    }
    var diff = 0;
    for (var i = 0; i < a.length; i++) {
        diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    }
    return diff === 0;
}

// An address as an array of bytes (4 or 16), or null.
function addressBytes(text) {
    if (text.indexOf(':') < 0) {
        var parts = text.split('.');
        if (parts.length !== 4) {
            return null;
        }
        var v4 = [];
        for (var i = 0; i < 4; i++) {
            if (!/^[0-9]{1,3}$/.test(parts[i]) || +parts[i] > 255) {
                return null;
            }
            v4.push(+parts[i]);
        }
        return v4;
    }
    var halves = text.split('::');
    if (halves.length > 2) {
        return null;
    }
    var groups = function (s) { return s === '' ? [] : s.split(':'); };
    var head = groups(halves[0]);
    var tail = halves.length === 2 ? groups(halves[1]) : [];
    var missing = 8 - head.length - tail.length;
    if ((halves.length === 1 && missing !== 0) || missing < 0) {
        return null;
    }
    var all = head.concat(new Array(halves.length === 2 ? missing : 0).fill('0'), tail);
    var v6 = [];
    for (var j = 0; j < all.length; j++) {
        if (!/^[0-9A-Fa-f]{1,4}$/.test(all[j])) {
            return null;
        }
        var n = parseInt(all[j], 16);
        v6.push(n >> 8, n & 0xff);
    }
    return v6;
}

// True if `client` is in `network` (an address or a CIDR block, with
// '/' and ':' possibly percent-encoded); null if `network` is malformed.
function inNetwork(network, client) {
    var net = network.replace(/%2F/gi, '/').replace(/%3A/gi, ':');
    var slash = net.indexOf('/');
    var base = addressBytes(slash < 0 ? net : net.substring(0, slash));
    if (base === null) {
        return null;
    }
    var bits = base.length * 8;
    if (slash >= 0) {
        var prefix = net.substring(slash + 1);
        if (!/^[0-9]{1,3}$/.test(prefix) || +prefix > base.length * 8) {
            return null;
        }
        bits = +prefix;
    }
    var addr = addressBytes(client || '');
    if (addr === null || addr.length !== base.length) {
        return false;
    }
    for (var i = 0; i < base.length; i++) {
        var take = Math.max(0, Math.min(8, bits - i * 8));
        var mask = take === 0 ? 0 : (0xff << (8 - take)) & 0xff;
        if ((addr[i] & mask) !== (base[i] & mask)) {
            return false;
        }
    }
    return true;
}

function setting_number(r, name, fallback) {
    var value = r.variables[name];
    return value && /^[0-9]+$/.test(value) ? +value : fallback;
}

function check(r) {
    var p = params(r.variables.args);
    if (p === null) {
        return 'public';
    }
    if (p === 'bad') {
        return '403';
    }
    var keys;
    try {
        keys = keyring(r.variables.hayloft_keyring);
    } catch (e) {
        r.error('hayloft edge: cannot read the key ring: ' + e.message);
        return '403';
    }
    var secret = keys[p.k];
    if (!secret) {
        return '403';
    }
    var bind = p.ip === undefined ? '' : p.ip;
    var text = VERSION + '\n' + rawPath(r) + '\n' + p.e + '\n' + p.k + '\n' + bind;
    var want = crypto.createHmac('sha256', secret).update(text).digest('base64url');
    if (!sameText(want, p.s)) {
        return '403';
    }
    var now = Math.floor(Date.now() / 1000);
    var skew = setting_number(r, 'hayloft_clock_skew', 60);
    var lifetime = setting_number(r, 'hayloft_max_lifetime', 86400);
    var expires = +p.e;
    if (expires > now + lifetime + skew) {
        return '403';
    }
    if (now > expires + skew) {
        return '410';
    }
    if (p.ip !== undefined && inNetwork(p.ip, r.remoteAddress) !== true) {
        return '403';
    }
    return 'signed';
}

// js_set $hayloft_verdict hayloft.verdict;
function verdict(r) {
    return check(r);
}

// js_set $hayloft_cache_key hayloft.cache_key; the path and the verdict.
function cache_key(r) {
    return rawPath(r) + '|' + r.variables.hayloft_verdict;
}

// js_header_filter hayloft.headers; what viewers are told they may keep.
function headers(r) {
    var verdict = r.variables.hayloft_verdict;
    if (verdict === '403' || verdict === '410' || r.status === 403 || r.status === 410) {
        r.headersOut['Cache-Control'] = 'no-store';
    } else if (verdict === 'signed') {
        // One cached copy serves many URLs: each viewer may keep it only
        // as long as its own URL lives, and only in its own cache.
        var p = params(r.variables.args);
        var left = Math.max(0, +p.e - Math.floor(Date.now() / 1000));
        r.headersOut['Cache-Control'] = 'private, max-age=' + left;
    }
}

export default { verdict, cache_key, headers, inNetwork, params };
