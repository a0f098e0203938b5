// SoilNB soil probe codec, ChirpStack v4 / The Things Stack style (runs there unchanged too).
//
// Frames are big endian. Byte 0 is the frame type:
//
//   0x01 report, 12 bytes
//     1  u16  soilMoisture     x 0.1 %       (0..1000)
//     3  i16  soilTemperature  x 0.01 degC   (-4000..8500)
//     5  u16  conductivity     uS/cm         (0..20000)
//     7  u16  batteryVoltage   mV -> V       (0..5000)
//     9  i16  rsrp             dBm           (-140..-44)
//    11  u8   sensorStatus     0 ok, 1 probe not in soil, 2 probe fault
//
//   0x02 dry alarm, 5 bytes (event dryAlarm)
//     1  u16  soilMoisture     x 0.1 %
//     3  u16  threshold        x 0.1 %
//
// encodeDownlink encodes the commands the probe takes, and otherwise writes the same frames as it
// sends (the device's test tool sends them back to it), so decodeUplink(encodeDownlink(x)) === x.
//
// Commands (down_raw), big endian:
//
//   0x81 set report interval, 5 bytes (service setReportInterval)
//     1  u32  interval         seconds       (60..86400)
//
// Wanwu passes {data: params, variables, method, id}: `method` is the Alink method
// ("thing.service.setReportInterval"). ChirpStack passes only {data, variables}; there a queued
// {"interval": 600} is the same command.

var REPORT = 0x01;
var DRY_ALARM = 0x02;
var REPORT_LENGTH = 12;
var ALARM_LENGTH = 5;
var REPORT_FIELDS = ['soilMoisture', 'soilTemperature', 'conductivity', 'batteryVoltage', 'rsrp', 'sensorStatus'];
var SET_INTERVAL = 0x81;
var SET_INTERVAL_METHOD = 'thing.service.setReportInterval';

function u16(b, i) {
  return (b[i] << 8) | b[i + 1];
}

function i16(b, i) {
  var v = u16(b, i);
  return v & 0x8000 ? v - 0x10000 : v;
}

function hex(n) {
  return '0x' + (n < 16 ? '0' : '') + n.toString(16);
}

function decodeUplink(input) {
  var b = input.bytes;
  if (b.length === 0) return { errors: ['empty frame'] };
  var type = b[0];
  if (type === REPORT) {
    if (b.length !== REPORT_LENGTH) return { errors: ['report frame is ' + b.length + ' bytes; expected ' + REPORT_LENGTH] };
    return {
      data: {
        soilMoisture: u16(b, 1) / 10,
        soilTemperature: i16(b, 3) / 100,
        conductivity: u16(b, 5),
        batteryVoltage: u16(b, 7) / 1000,
        rsrp: i16(b, 9),
        sensorStatus: b[11]
      }
    };
  }
  if (type === DRY_ALARM) {
    if (b.length !== ALARM_LENGTH) return { errors: ['alarm frame is ' + b.length + ' bytes; expected ' + ALARM_LENGTH] };
    return { event: 'dryAlarm', data: { soilMoisture: u16(b, 1) / 10, threshold: u16(b, 3) / 10 } };
  }
  return { errors: ['unknown frame type ' + hex(type)] };
}

// Pushes value / scale, rounded, as a big-endian 16-bit integer; returns an error text or ''.
function put16(out, name, value, scale, min, max) {
  if (typeof value !== 'number') return name + ' missing';
  var raw = Math.round(value / scale);
  if (raw < min || raw > max) return name + ' ' + value + ' out of range';
  out.push((raw >> 8) & 0xff, raw & 0xff);
  return '';
}

function encodeDownlink(input) {
  if (input.method !== undefined || (input.data && input.data.interval !== undefined)) return encodeCommand(input);
  return encodeFrame(input);
}

function encodeCommand(input) {
  var method = input.method === undefined ? SET_INTERVAL_METHOD : input.method;
  if (method !== SET_INTERVAL_METHOD) return { errors: ['no downlink frame for ' + method] };
  var s = input.data.interval;
  if (typeof s !== 'number' || s !== Math.floor(s) || s < 60 || s > 86400) {
    return { errors: ['interval ' + s + ' is not a whole number of seconds in 60..86400'] };
  }
  return { bytes: [SET_INTERVAL, (s >>> 24) & 0xff, (s >>> 16) & 0xff, (s >>> 8) & 0xff, s & 0xff] };
}

// The uplink frames, for the device's test tool (and the simulator).
function encodeFrame(input) {
  var d = input.data;
  var out = [];
  var errors = [];
  if (input.event === 'dryAlarm') {
    out.push(DRY_ALARM);
    errors.push(put16(out, 'soilMoisture', d.soilMoisture, 0.1, 0, 1000));
    errors.push(put16(out, 'threshold', d.threshold, 0.1, 0, 1000));
  } else if (input.event === undefined) {
    for (var k in d) {
      if (REPORT_FIELDS.indexOf(k) < 0) errors.push('unknown property ' + k);
    }
    out.push(REPORT);
    errors.push(put16(out, 'soilMoisture', d.soilMoisture, 0.1, 0, 1000));
    errors.push(put16(out, 'soilTemperature', d.soilTemperature, 0.01, -4000, 8500));
    errors.push(put16(out, 'conductivity', d.conductivity, 1, 0, 20000));
    errors.push(put16(out, 'batteryVoltage', d.batteryVoltage, 0.001, 0, 5000));
    errors.push(put16(out, 'rsrp', d.rsrp, 1, -140, -44));
    if (d.sensorStatus !== 0 && d.sensorStatus !== 1 && d.sensorStatus !== 2) errors.push('sensorStatus must be 0, 1 or 2');
    out.push(d.sensorStatus & 0xff);
  } else {
    errors.push('unknown event ' + input.event);
  }
  errors = errors.filter(function (e) { return e !== ''; });
  if (errors.length > 0) return { errors: errors };
  return { bytes: out };
}
