//! The active alarms (etcd's `alarm.AlarmStore`): replicated state, changed only by
//! applied Alarm requests, so every member holds the same list at the same index.

use rivet_api::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmType};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alarms {
    active: Vec<AlarmMember>,
}

impl Alarms {
    pub fn from_list(active: Vec<AlarmMember>) -> Alarms {
        Alarms { active }
    }

    pub fn list(&self) -> &[AlarmMember] {
        &self.active
    }

    /// Whether any member has `alarm` raised.
    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        self.active.iter().any(|a| a.alarm == alarm as i32)
    }

    /// Applies an Alarm request and answers etcd's response list: the alarm activated or
    /// deactivated (empty when nothing changed), or every alarm for GET.
    pub fn apply(&mut self, request: &AlarmRequest) -> Vec<AlarmMember> {
        let member = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        if request.action == AlarmAction::Activate as i32 {
            if self.active.contains(&member) {
                return Vec::new();
            }
            self.active.push(member);
            let alarm = rivet_api::etcdserverpb::AlarmType::try_from(member.alarm).map_or_else(
                |_| member.alarm.to_string(),
                |a| a.as_str_name().to_string(),
            );
            tracing::warn!(
                alarm = %alarm,
                from = %format!("{:x}", member.member_id),
                "alarm raised"
            );
            vec![member]
        } else if request.action == AlarmAction::Deactivate as i32 {
            let before = self.active.len();
            self.active.retain(|a| a != &member);
            if self.active.len() < before {
                vec![member]
            } else {
                Vec::new()
            }
        } else {
            self.active.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(action: AlarmAction, member_id: u64) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: AlarmType::Nospace as i32,
        }
    }

    #[test]
    fn alarms_are_raised_once_per_member_and_disarmed() {
        let mut alarms = Alarms::default();
        assert_eq!(alarms.apply(&request(AlarmAction::Activate, 1)).len(), 1);
        assert!(alarms.apply(&request(AlarmAction::Activate, 1)).is_empty());
        assert_eq!(alarms.apply(&request(AlarmAction::Activate, 2)).len(), 1);
        assert!(alarms.is_raised(AlarmType::Nospace));
        assert_eq!(alarms.apply(&request(AlarmAction::Get, 0)).len(), 2);
        assert_eq!(alarms.apply(&request(AlarmAction::Deactivate, 1)).len(), 1);
        assert!(alarms
            .apply(&request(AlarmAction::Deactivate, 1))
            .is_empty());
        assert!(alarms.is_raised(AlarmType::Nospace));
        alarms.apply(&request(AlarmAction::Deactivate, 2));
        assert!(!alarms.is_raised(AlarmType::Nospace));
    }
}
