use super::*;

/// Records what the interlock did, in order.
#[derive(Default)]
struct Fake {
    up: bool,
    log: Vec<String>,
    /// The next OPEN_CIRCUIT's sequence number.
    seq: u32,
    /// The samples the step stop reported, with their limits.
    stops: Vec<(Sample, f64)>,
}

impl SafetyLink for Fake {
    fn open_circuit(&mut self) -> Result<u32, String> {
        self.log.push("OPEN_CIRCUIT".into());
        if self.up {
            self.seq += 1;
            Ok(self.seq - 1)
        } else {
            Err("down".into())
        }
    }
    fn state_changed(&mut self, _host_ns: i64, state: SafetyState, reason: &'static str) {
        self.log.push(format!("{}:{reason}", state.name()));
    }
    fn step_stopped(&mut self, sample: &Sample, limit_v: f64) {
        self.log.push(format!("stop:{}", sample.ewe_v));
        self.stops.push((*sample, limit_v));
    }
}

const MS: i64 = 1_000_000;

fn sample(t_ms: i64, ewe_v: f64, current_a: f64) -> Sample {
    Sample {
        host_ns: t_ms * MS,
        arrival_ns: t_ms * MS,
        tick: (t_ms as u64) * 1000, // 1 µs ticks
        ewe_v,
        current_a,
        mode: u8::from(current_a != 0.0),
        flags: 0,
    }
}

fn armed() -> (Interlock, Fake) {
    let mut il = Interlock::new(InterlockConfig::default()).unwrap();
    let mut link = Fake {
        up: true,
        ..Fake::default()
    };
    il.on_link_up(10e-6, 1_000_000_000, 0, &mut link);
    (il, link)
}

#[test]
fn the_limits_themselves_are_allowed_beyond_them_trips() {
    for (ewe, i, want) in [
        (10.0, 1e-6, None),
        (-10.0, 1e-6, None),
        (10.0 + 1e-9, 1e-6, Some(TripReason::EweHigh)),
        (-10.0 - 1e-9, 1e-6, Some(TripReason::EweLow)),
        (12.0, 1e-6, Some(TripReason::EweHigh)),
        (-10.5, 1e-6, Some(TripReason::EweLow)),
        (1.0, 10e-6, None),
        (1.0, -10e-6, None),
        (1.0, 10.000001e-6, Some(TripReason::CurrentCompliance)),
        (f64::NAN, 1e-6, Some(TripReason::NonFinite)),
        (1.0, f64::INFINITY, Some(TripReason::NonFinite)),
        (f64::NEG_INFINITY, 0.0, Some(TripReason::NonFinite)),
    ] {
        let (il, _) = armed();
        let got = il.judge(&sample(1, ewe, i)).map(|(r, _)| r);
        assert_eq!(got, want, "Ewe {ewe} V, I {i} A");
    }
}

#[test]
fn a_trip_writes_open_circuit_before_anything_else_and_latches() {
    let (mut il, mut link) = armed();
    il.on_sample(&sample(1, 9.9, 1e-6), MS, &mut link);
    assert!(link.log.is_empty());
    il.on_sample(&sample(2, 12.0, 1e-6), 2 * MS, &mut link);
    assert_eq!(link.log, ["OPEN_CIRCUIT", "tripped:ewe_high"]);
    let st = il.status();
    assert_eq!(st.state, SafetyState::Tripped);
    let trip = st.trip.unwrap();
    assert_eq!(trip.sample.unwrap().ewe_v, 12.0);
    assert_eq!(trip.trip_host_ns, 2 * MS);
    assert!(trip.detail.contains("12") && trip.detail.contains("10"));
    // A second condition changes nothing: the first trip is the one latched.
    il.on_sample(&sample(3, -11.0, 1e-6), 3 * MS, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::EweHigh);
    // No current while tripped; open circuit always passes.
    let set = 1e-6f64.to_le_bytes();
    assert!(il.allow_command(kind::SET_CURRENT, &set, 4 * MS).is_err());
    assert!(il.allow_command(kind::START_EIS, &[0; 20], 4 * MS).is_err());
    assert!(il.allow_command(kind::OPEN_CIRCUIT, &[], 4 * MS).is_ok());
    assert!(il.allow_command(kind::READ_STATUS, &[], 4 * MS).is_ok());
}

#[test]
fn unconfirmed_open_circuit_is_resent_and_escalates_to_alarm() {
    let (mut il, mut link) = armed();
    il.on_sample(&sample(0, 11.0, 1e-6), 0, &mut link);
    link.log.clear();
    // The instrument acknowledges but the current keeps flowing.
    il.on_reply(0, true);
    for t in (10..=1500).step_by(10) {
        il.on_sample(&sample(t, 9.0, 1e-6), t * MS, &mut link);
        il.on_idle(t * MS, &mut link);
    }
    let writes = link.log.iter().filter(|l| *l == "OPEN_CIRCUIT").count();
    assert_eq!(writes, 7, "every 0.2 s: {:?}", link.log); // 200, 400, ... 1400 ms
    assert!(link.log.contains(&"alarm:ewe_high".to_owned()));
    let st = il.status();
    assert_eq!(st.state, SafetyState::Alarm);
    assert_eq!(st.alarm_host_ns, Some(1010 * MS));
    assert!(st.open_circuit_acknowledged && !st.open_circuit_confirmed);
    // Open circuit at last: back to TRIPPED, confirmed, still latched.
    let mut oc = sample(1510, 3.0, 0.0);
    oc.mode = 0;
    il.on_sample(&oc, 1510 * MS, &mut link);
    assert_eq!(il.state(), SafetyState::Tripped);
    assert!(il.status().open_circuit_confirmed);
    assert_eq!(link.log.last().unwrap(), "tripped:open_circuit_confirmed");
}

#[test]
fn reset_is_refused_while_the_condition_persists() {
    let (mut il, mut link) = armed();
    assert!(il
        .reset("ana", "why", 0, &mut link)
        .unwrap_err()
        .contains("armed"));
    il.on_sample(&sample(0, 10.5, 1e-6), 0, &mut link);
    assert!(il
        .reset("", "why", 0, &mut link)
        .unwrap_err()
        .contains("operator"));
    assert!(il
        .reset("ana", " ", 0, &mut link)
        .unwrap_err()
        .contains("reason"));
    let e = il.reset("ana", "checked", 0, &mut link).unwrap_err();
    assert!(e.contains("not shown open circuit"), "{e}");
    // At open circuit but still above the limit (a relaxing cell).
    il.on_sample(&sample(10, 10.2, 0.0), 10 * MS, &mut link);
    let e = il.reset("ana", "checked", 10 * MS, &mut link).unwrap_err();
    assert!(e.contains("persists") && e.contains("10.2"), "{e}");
    il.on_sample(&sample(20, 9.0, 0.0), 20 * MS, &mut link);
    il.on_link_down(25 * MS, "gone", &mut link);
    assert!(il
        .reset("ana", "checked", 30 * MS, &mut link)
        .unwrap_err()
        .contains("down"));
    il.on_link_up(10e-6, 1_000_000_000, 40 * MS, &mut link);
    il.on_sample(&sample(50, 9.0, 0.0), 50 * MS, &mut link);
    let r = il.reset("ana", "checked", 60 * MS, &mut link).unwrap();
    assert_eq!(
        (r.operator.as_str(), r.cleared.reason),
        ("ana", TripReason::EweHigh)
    );
    assert_eq!(il.state(), SafetyState::Armed);
    assert_eq!(link.log.last().unwrap(), "armed:reset");
    assert!(il
        .allow_command(kind::SET_CURRENT, &1e-6f64.to_le_bytes(), 70 * MS)
        .is_ok());
}

#[test]
fn samples_that_stop_while_current_flows_trip() {
    let (mut il, mut link) = armed();
    // At open circuit silence is fine.
    il.on_sample(&sample(0, 3.0, 0.0), 0, &mut link);
    il.on_idle(5000 * MS, &mut link);
    assert_eq!(il.state(), SafetyState::Armed);
    // Current commanded: the gap counts from the command...
    il.allow_command(kind::SET_CURRENT, &1e-6f64.to_le_bytes(), 6000 * MS)
        .unwrap();
    il.on_idle(6500 * MS, &mut link); // exactly the limit: allowed
    assert_eq!(il.state(), SafetyState::Armed);
    il.on_idle(6501 * MS, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::SampleGap);
    assert_eq!(link.log[..2], ["OPEN_CIRCUIT", "tripped:sample_gap"]);
}

#[test]
fn link_lost_while_current_flows_trips_and_reopens_on_reconnect() {
    let (mut il, mut link) = armed();
    il.on_sample(&sample(0, 3.0, 1e-6), 0, &mut link);
    link.up = false;
    il.on_link_down(10 * MS, "reset by peer", &mut link);
    let st = il.status();
    assert_eq!(st.trip.as_ref().unwrap().reason, TripReason::LinkLost);
    assert!(!st.trip.unwrap().open_circuit_written);
    link.up = true;
    link.log.clear();
    il.on_link_up(10e-6, 1_000_000_000, 20 * MS, &mut link);
    assert_eq!(link.log, ["OPEN_CIRCUIT"]);
    assert!(il.status().trip.unwrap().open_circuit_written);
}

#[test]
fn link_lost_at_open_circuit_does_not_trip() {
    let (mut il, mut link) = armed();
    il.on_sample(&sample(0, 3.0, 0.0), 0, &mut link);
    il.on_link_down(10 * MS, "gone", &mut link);
    assert_eq!(il.state(), SafetyState::Armed);
}

#[test]
fn time_going_backwards_beyond_the_tolerance_trips() {
    let (mut il, mut link) = armed();
    il.on_sample(&sample(5000, 1.0, 1e-6), 0, &mut link);
    let mut s = sample(4000, 1.0, 1e-6); // exactly 1 s behind: allowed
    il.on_sample(&s, 1, &mut link);
    assert_eq!(il.state(), SafetyState::Armed);
    s.tick -= 1;
    il.on_sample(&s, 2, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::TimeBackwards);
}

#[test]
fn shutdown_trips_and_a_restored_trip_latches_before_any_current() {
    let (mut il, mut link) = armed();
    il.on_shutdown(5, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::Shutdown);

    let mut il = Interlock::new(InterlockConfig::default()).unwrap();
    let mut link = Fake::default();
    il.restore(
        TripReason::EweHigh,
        "before".into(),
        42,
        None,
        50,
        &mut link,
    );
    assert_eq!(link.log, ["tripped:ewe_high"]); // link down: nothing written yet
    assert!(il
        .allow_command(kind::SET_CURRENT, &1e-6f64.to_le_bytes(), 60)
        .is_err());
    link.up = true;
    il.on_link_up(10e-6, 1_000_000_000, 70, &mut link);
    assert_eq!(link.log.last().unwrap(), "OPEN_CIRCUIT");
    let trip = il.status().trip.unwrap();
    assert!(trip.restored && trip.trip_host_ns == 42);
}

#[test]
fn configuration_is_validated_with_the_key() {
    let bad = |f: fn(&mut InterlockConfig), key: &str| {
        let mut c = InterlockConfig::default();
        f(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("interlock.{key}")), "{e}");
    };
    bad(|c| c.ewe_max_v = -11.0, "ewe_max_v");
    bad(|c| c.ewe_min_v = 10.0, "ewe_max_v");
    bad(|c| c.ewe_max_v = 25.0, "ewe_max_v");
    bad(|c| c.ewe_min_v = f64::NAN, "ewe_min_v");
    bad(|c| c.compliance_a = Some(0.0), "compliance_a");
    bad(|c| c.max_sample_gap_s = 0.0, "max_sample_gap_s");
    bad(|c| c.confirm_timeout_s = f64::INFINITY, "confirm_timeout_s");
    bad(|c| c.resend_interval_s = -1.0, "resend_interval_s");
    bad(|c| c.backwards_tolerance_s = 0.0, "backwards_tolerance_s");
    assert!(InterlockConfig::default().validate().is_ok());
}

#[test]
fn configured_compliance_wins_over_the_instruments() {
    let cfg = InterlockConfig {
        compliance_a: Some(5e-6),
        ..InterlockConfig::default()
    };
    let mut il = Interlock::new(cfg).unwrap();
    let mut link = Fake {
        up: true,
        ..Fake::default()
    };
    il.on_link_up(10e-6, 1_000_000_000, 0, &mut link);
    il.on_sample(&sample(1, 1.0, 6e-6), 1, &mut link);
    assert_eq!(
        il.status().trip.unwrap().reason,
        TripReason::CurrentCompliance
    );
}

/// A sample at open circuit (mode 0, no current) at `ewe_v`.
fn at_open_circuit(t_ms: i64, ewe_v: f64) -> Sample {
    sample(t_ms, ewe_v, 0.0)
}

#[test]
fn an_armed_step_stop_fires_once_at_the_first_galvanostatic_sample_at_its_limit() {
    let (mut il, mut link) = armed();
    assert_eq!(il.stop_armed(), None);
    il.arm_stop(5.0).unwrap();
    assert_eq!(il.stop_armed(), Some(5.0));
    assert_eq!(il.status().step_stop_v, Some(5.0));
    // Below the limit, or at open circuit beyond it (a relaxing cell): nothing.
    il.on_sample(&sample(1, 4.999, 4e-8), MS, &mut link);
    il.on_sample(&sample(2, -4.999, 4e-8), 2 * MS, &mut link);
    il.on_sample(&at_open_circuit(3, 6.0), 3 * MS, &mut link);
    let mut eis = sample(4, 7.0, 4e-8);
    eis.mode = mode::EIS;
    il.on_sample(&eis, 4 * MS, &mut link);
    assert!(link.log.is_empty(), "{:?}", link.log);
    // The limit itself stops (|Ewe|: either polarity), OPEN_CIRCUIT first.
    let at = sample(5, -5.0, -4e-8);
    il.on_sample(&at, 5 * MS, &mut link);
    assert_eq!(link.log, ["OPEN_CIRCUIT", "stop:-5"]);
    assert_eq!(link.stops, [(at, 5.0)]);
    // Disarmed: the samples after it, further still, change nothing.
    il.on_sample(&sample(6, 7.0, 4e-8), 6 * MS, &mut link);
    il.on_sample(&sample(7, 9.5, 4e-8), 7 * MS, &mut link);
    assert_eq!(link.log.len(), 2, "{:?}", link.log);
    let st = il.status();
    assert_eq!((st.step_stop_v, st.step_stops), (None, 1));
    // Not a trip: no latch, no state change, the interlock's own counts untouched.
    assert_eq!(st.state, SafetyState::Armed);
    assert!(st.trip.is_none());
    assert_eq!((st.trips, st.changes, st.open_circuit_writes), (0, 0, 0));
    assert!(il
        .allow_command(kind::SET_CURRENT, &4e-8f64.to_le_bytes(), 8 * MS)
        .is_ok());
    // Armed again, it fires again: it does not latch.
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(9, 5.5, 4e-8), 9 * MS, &mut link);
    assert_eq!(link.stops.len(), 2);
    assert_eq!(link.stops[1].0.tick, sample(9, 0.0, 0.0).tick);
}

#[test]
fn a_step_stop_does_not_fire_for_nan_or_after_disarm() {
    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    assert_eq!(il.disarm_stop(), Some(5.0));
    assert_eq!(il.disarm_stop(), None);
    il.on_sample(&sample(1, 8.0, 4e-8), MS, &mut link);
    assert!(link.log.is_empty() && link.stops.is_empty());
    // NaN: the interlock trips (non-finite), the stop does not fire and is disarmed.
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(2, f64::NAN, 4e-8), 2 * MS, &mut link);
    assert_eq!(link.log, ["OPEN_CIRCUIT", "tripped:non_finite"]);
    assert!(link.stops.is_empty());
    assert_eq!(il.stop_armed(), None);
}

#[test]
fn a_sample_beyond_both_the_stop_and_the_safety_limit_trips_instead() {
    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(1, 12.0, 4e-8), MS, &mut link);
    assert_eq!(link.log, ["OPEN_CIRCUIT", "tripped:ewe_high"]);
    assert!(link.stops.is_empty());
    let st = il.status();
    assert_eq!(st.trip.unwrap().reason, TripReason::EweHigh);
    assert_eq!((st.step_stop_v, st.step_stops), (None, 0));
    // Tripped: an armed stop is not judged (the trip's own handling goes on).
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(2, 9.0, 4e-8), 2 * MS, &mut link);
    assert!(link.stops.is_empty());
    // A sample behind in time trips too, before the stop.
    let (mut il, mut link) = armed();
    il.on_sample(&sample(5000, 1.0, 4e-8), 0, &mut link);
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(3000, 6.0, 4e-8), 1, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::TimeBackwards);
    assert!(link.stops.is_empty());
}

#[test]
fn a_lost_link_a_shutdown_and_a_trip_disarm_the_step_stop() {
    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    il.on_link_down(MS, "gone", &mut link);
    assert_eq!(il.stop_armed(), None);
    il.on_link_up(10e-6, 1_000_000_000, 2 * MS, &mut link);
    il.on_sample(&sample(3, 6.0, 4e-8), 3 * MS, &mut link);
    assert!(link.stops.is_empty());

    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    il.on_shutdown(MS, &mut link);
    assert_eq!(il.stop_armed(), None);

    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    il.allow_command(kind::SET_CURRENT, &4e-8f64.to_le_bytes(), 0)
        .unwrap();
    il.on_idle(600 * MS, &mut link); // a sample gap
    assert_eq!(il.status().trip.unwrap().reason, TripReason::SampleGap);
    assert_eq!(il.stop_armed(), None);
}

#[test]
fn the_step_stops_reply_acknowledges_no_trip() {
    let (mut il, mut link) = armed();
    il.arm_stop(5.0).unwrap();
    il.on_sample(&sample(1, 5.0, 4e-8), MS, &mut link); // OPEN_CIRCUIT sequence 0
    il.on_sample(&sample(2, 11.0, 4e-8), 2 * MS, &mut link); // the trip's: sequence 1
    il.on_reply(0, true);
    assert!(!il.status().open_circuit_acknowledged);
    il.on_reply(1, true);
    assert!(il.status().open_circuit_acknowledged);
}

#[test]
fn a_step_stop_limit_must_be_a_finite_positive_voltage() {
    let (mut il, _) = armed();
    for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
        let e = il.arm_stop(bad).unwrap_err();
        assert!(matches!(e, CoreError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("interlock.step_stop.limit_v"), "{e}");
        assert_eq!(il.stop_armed(), None);
    }
    il.arm_stop(5.0).unwrap();
    assert!(il.arm_stop(f64::NAN).is_err());
    assert_eq!(
        il.stop_armed(),
        Some(5.0),
        "a refused limit leaves the armed one"
    );
    il.arm_stop(13.5).unwrap();
    assert_eq!(il.stop_armed(), Some(13.5), "a new limit replaces it");
}

#[test]
fn a_set_current_with_a_voltage_limit_is_gated_like_the_plain_one() {
    use crate::link::potentiostat::pack_current;
    let (mut il, mut link) = armed();
    // A zero current with a limit starts nothing; a current with one does.
    let zero = pack_current(0.0, Some(5.0));
    il.allow_command(kind::SET_CURRENT, &zero, MS).unwrap();
    assert!(!il.status().current_flowing);
    let strip = pack_current(4e-8, Some(5.0));
    assert_eq!(strip.len(), 16);
    il.allow_command(kind::SET_CURRENT, &strip, MS).unwrap();
    assert!(il.status().current_flowing);
    // The gap counts from that command, as for the 8-byte form.
    il.on_idle(MS + 500 * MS, &mut link);
    assert_eq!(il.state(), SafetyState::Armed);
    il.on_idle(MS + 501 * MS, &mut link);
    assert_eq!(il.status().trip.unwrap().reason, TripReason::SampleGap);
    // Tripped: refused in both forms, whatever the limit.
    for payload in [
        strip,
        pack_current(4e-8, None),
        pack_current(4e-8, Some(0.0)),
    ] {
        let refused = il.allow_command(kind::SET_CURRENT, &payload, 600 * MS);
        assert!(refused.is_err_and(|m| m.contains("SET_CURRENT refused")));
    }
    assert!(il.allow_command(kind::OPEN_CIRCUIT, &[], 600 * MS).is_ok());
}
