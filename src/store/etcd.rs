//! The etcd backend (etcd-client). (Placeholder: being written.)

use super::*;

pub struct EtcdStore {}

impl EtcdStore {
    pub async fn connect(_endpoints: &[String]) -> Result<EtcdStore> {
        Err(Error::Other("etcd store not written yet".into()))
    }
}
