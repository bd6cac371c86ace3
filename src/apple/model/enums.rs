//! Apple's string enums. Each has an `Unknown` arm: Apple adds values over time.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::model::EventType;

macro_rules! apple_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $s)] $variant,)+
            /// A value this build does not know (Apple adds values over time).
            #[serde(other)]
            Unknown,
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)+ $name::Unknown => "Unknown" }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

apple_enum!(PricingParam { Stdq => "STDQ", Plus => "PLUS" });
apple_enum!(ProductType { App => "App", Book => "Book" });
apple_enum!(Platform { Ios => "iOS", MacOs => "macOS", TvOs => "tvOS", WatchOs => "watchOS", VisionOs => "visionOS" });
apple_enum!(UserStatus { Registered => "Registered", Associated => "Associated", Retired => "Retired", Deleted => "Deleted" });
apple_enum!(EventStatus { Pending => "PENDING", Complete => "COMPLETE", Failed => "FAILED" });
apple_enum!(NotificationResult { Success => "SUCCESS", Failure => "FAILURE" });
apple_enum!(AssetManagementType { Associate => "ASSOCIATE", Disassociate => "DISASSOCIATE", Revoke => "REVOKE" });
apple_enum!(UserManagementType { Create => "CREATE", Update => "UPDATE", Retire => "RETIRE" });
apple_enum!(NotificationType {
    AssetManagement => "ASSET_MANAGEMENT",
    UserManagement => "USER_MANAGEMENT",
    AssetCount => "ASSET_COUNT",
    UserAssociated => "USER_ASSOCIATED",
    TestNotification => "TEST_NOTIFICATION",
    SubscriptionManagement => "SUBSCRIPTION_MANAGEMENT",
    SubscriptionCount => "SUBSCRIPTION_COUNT",
    UnlimitedAsset => "UNLIMITED_ASSET",
});

impl AssetManagementType {
    pub fn event_type(self) -> Option<EventType> {
        match self {
            AssetManagementType::Associate => Some(EventType::Associate),
            AssetManagementType::Disassociate => Some(EventType::Disassociate),
            AssetManagementType::Revoke => Some(EventType::Revoke),
            AssetManagementType::Unknown => None,
        }
    }
}

impl UserManagementType {
    pub fn event_type(self) -> Option<EventType> {
        match self {
            UserManagementType::Create => Some(EventType::Create),
            UserManagementType::Update => Some(EventType::Update),
            UserManagementType::Retire => Some(EventType::Retire),
            UserManagementType::Unknown => None,
        }
    }
}
